"""modelpress: compress PyTorch models in bulk through a Celery job queue.

Importing the package is light (no torch, no Celery); ``modelpress.load`` imports torch on use.

Example:
    >>> import modelpress
    >>> callable(modelpress.load)
    True
"""

from __future__ import annotations

from typing import Any

__all__ = ["load", "__version__"]
__version__ = "0.1.0"


def load(path: str, *, threads: int = 1, **kwargs: Any) -> Any:
    """Reload an artifact written by a worker as a callable with the model's forward signature.

    A ``.mpz`` (torch runtime) gives an ``nn.Module`` in eval mode (``kwargs`` go to ``load_artifact``); an
    ONNX Runtime or OpenVINO artifact gives a callable over that runtime's session, ``threads`` pinned; a causal
    LM's artifact (``.safetensors`` from torch, a causal-LM ``.ovz``) gives an ``LMRunner`` (``logits``, ``prefill``,
    ``step``: ``modelpress.optimize.lm.runner``).

    Example:
        >>> import modelpress  # doctest: +SKIP
        >>> model = modelpress.load("artifacts/ab12....mpz")  # doctest: +SKIP
        >>> encode = modelpress.load("artifacts/cd34....onnx", threads=1)  # doctest: +SKIP
    """
    from pathlib import Path

    from modelpress.optimize.lm.adapters import lm_runtime_for_path
    from modelpress.optimize.runtimes.registry import runtime_for_path

    if (lm := lm_runtime_for_path(path)) is not None:  # a causal LM's: its runner (logits, prefill, step)
        return lm.load(Path(path), threads)
    rt = runtime_for_path(path)
    if rt is None or rt.name == "torch":
        from modelpress.optimize.artifacts import load_artifact

        if "resolve_ref" not in kwargs:
            # A model given by its files (issue 9) is rebuilt from them; where the worker's copies are not
            # on this machine, fetch them from the artifact store (content-addressed, hash-checked).
            def resolve_ref(stored: Any) -> Any:
                from modelpress.settings import Settings
                from modelpress.worker_store import fetch_model_ref

                return fetch_model_ref(Settings(), stored)

            kwargs["resolve_ref"] = resolve_ref
        return load_artifact(path, **kwargs).model
    return rt.load(Path(path), threads)

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


def load(path: str, **kwargs: Any) -> Any:
    """Reload an artifact written by a worker as a ready-to-run ``nn.Module`` (eval mode).

    Example:
        >>> import modelpress  # doctest: +SKIP
        >>> model = modelpress.load("artifacts/ab12....mpz")  # doctest: +SKIP
    """
    from modelpress.optimize.artifacts import load_artifact

    return load_artifact(path, **kwargs).model

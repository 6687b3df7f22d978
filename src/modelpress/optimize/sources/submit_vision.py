"""The ``torchvision:`` and ``timm:`` sources' submit check, without torchvision or timm: name, weights, data.

What lives here: ``submit_check`` (the architecture name is one the library builds, the weights file is
sound, and the data fits the classifier) and ``architecture_names`` (the names each library accepts, from
the static lists in ``sources.architecture_names``: importing torchvision or timm at submit would take
seconds, and a producer may not have them). The class count is read from the weights' safetensors header
(``classifier_classes``), so no tensor is loaded.

``sources.submit.check_ref`` dispatches here for ``torchvision`` and ``timm`` refs.

Example:
    >>> from modelpress.optimize.sources import parse_model_ref
    >>> ref = parse_model_ref("torchvision:resnet9000", weights="/nope.safetensors", data={"eval": "/imgs"})
    >>> submit_check(ref, max_bytes=1 << 30)[0]  # doctest: +ELLIPSIS
    (('model',), "unknown torchvision model 'resnet9000'...")
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING

from modelpress.optimize.sources import architecture_names as names
from modelpress.optimize.sources.submit_data import data_problems
from modelpress.optimize.sources.weights_file import safetensors_header, weights_file_problems

if TYPE_CHECKING:
    from modelpress.optimize.sources.data_checks import Problem
    from modelpress.optimize.sources.ref import ModelRef

# Classifier weight names of torchvision/timm architectures, most specific first: their first dimension
# is the class count.
CLASSIFIER_KEYS = ("fc.weight", "head.fc.weight", "head.weight", "heads.head.weight", "classifier.weight",
                   "classifier.1.weight", "classifier.3.weight", "classifier.6.weight", "last_linear.weight")


def submit_check(ref: "ModelRef", *, max_bytes: int) -> list[Problem]:
    """Every problem of a ``torchvision:``/``timm:`` ref found without torch, as (field path, message).

    Example:
        >>> from modelpress.optimize.sources import parse_model_ref
        >>> ref = parse_model_ref("timm:resnet18", weights="/nope.safetensors", data={"eval": "/imgs"})
        >>> [loc for loc, _ in submit_check(ref, max_bytes=1 << 30)]
        [('weights',), ('data', 'eval')]
    """
    problems: list[Problem] = []
    known = architecture_names(ref.kind)
    if ref.name not in known:
        close = difflib.get_close_matches(ref.name, known, n=3)
        problems.append((("model",), f"unknown {ref.kind} model {ref.name!r}"
                                     + (f"; did you mean {', '.join(close)}?" if close else
                                        f"; {ref.kind} has {len(known)} models, e.g. {', '.join(known[:5])}")))
    weights = Path(ref.weights or "")
    broken = weights_file_problems(weights, max_bytes=max_bytes)
    problems += [(("weights",), m) for m in broken]
    classes = None if broken else classifier_classes(weights)
    return problems + data_problems(ref, max_bytes=max_bytes, classes=classes)


def architecture_names(kind: str) -> tuple[str, ...]:
    """The model names ``torchvision:``/``timm:`` accept, from a static list (no torchvision/timm import).

    ``tests/optimize/sources/test_architecture_names.py`` compares the lists with the installed packages.

    Example:
        >>> "resnet18" in architecture_names("torchvision")
        True
    """
    return names.TORCHVISION if kind == "torchvision" else names.TIMM


def classifier_classes(weights: Path) -> int | None:
    """The class count of a safetensors state dict's classifier (``CLASSIFIER_KEYS``), or None when unknown.

    Example:
        >>> classifier_classes(Path("/nope.pt")) is None
        True
    """
    if weights.suffix.lower() != ".safetensors":
        return None
    header = safetensors_header(weights)
    for key in CLASSIFIER_KEYS:
        shape = header.get(key, {}).get("shape") if isinstance(header.get(key), dict) else None
        if isinstance(shape, list) and len(shape) == 2:
            return int(shape[0])
    return None


__all__ = ["CLASSIFIER_KEYS", "architecture_names", "classifier_classes", "submit_check"]

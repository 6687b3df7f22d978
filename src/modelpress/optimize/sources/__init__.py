"""Where models come from: one small source per kind (registered factory, HF folder, torchvision/timm, .pt2).

Importing this package imports no torch: ``ref`` (the reference type) is torch-free and the sources
load on first use through ``get_source``.

Example:
    >>> from modelpress.optimize.sources import parse_model_ref
    >>> parse_model_ref("timm:resnet18", weights="w.safetensors", data={"eval": "imgs"}).kind
    'timm'
"""

from __future__ import annotations

import importlib
from typing import Any

from modelpress.optimize.sources.ref import (
    USER_KINDS,
    DataRef,
    ModelRef,
    ModelRefError,
    parse_model_ref,
    unsupported_reason,
)

# kind → "module:attr" of its ModelSource; imported on first use (torch, transformers, torchvision are heavy).
SOURCES: dict[str, str] = {
    "registered": "modelpress.optimize.sources.registered:RegisteredSource",
    "hf": "modelpress.optimize.sources.hf:HFSource",
    "torchvision": "modelpress.optimize.sources.vision:VisionSource",
    "timm": "modelpress.optimize.sources.vision:VisionSource",
    "export": "modelpress.optimize.sources.export:ExportSource",
}


def get_source(kind: str) -> Any:
    """The ``ModelSource`` for ``kind`` (imports its module, and torch, on first use).

    Example:
        >>> get_source("export").supports("prune_structured")  # doctest: +ELLIPSIS
        "step 'prune_structured' removes channels ..."
    """
    try:
        target = SOURCES[kind]
    except KeyError:
        raise ModelRefError(f"unknown model source {kind!r}; known: {', '.join(SOURCES)}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)(kind)


__all__ = ["DataRef", "ModelRef", "ModelRefError", "SOURCES", "USER_KINDS", "get_source", "parse_model_ref",
           "unsupported_reason"]

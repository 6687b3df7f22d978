"""The torch layer: measure, quantize, prune, distill. Knows nothing of Celery or the database.

Importing ``modelpress.optimize`` (or its ``errors``/``recipes`` modules) does not import torch, so a
producer can validate recipes cheaply; the names below load their modules on first use.

Example:
    >>> from modelpress.optimize import optimize_model, resolve_recipe  # doctest: +SKIP
    >>> optimize_model(model_name="digits_cnn", recipe=resolve_recipe("dynamic-int8"),
    ...                engine="fbgemm", store="/tmp/mp")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

from modelpress.optimize.errors import ModelLoadError, RecipeError, UnknownModelError, UserInputError
from modelpress.optimize.recipes import Recipe, resolve_recipe

_LAZY = {"OptimizeResult": "modelpress.optimize.pipeline", "optimize_model": "modelpress.optimize.pipeline"}

__all__ = ["ModelLoadError", "OptimizeResult", "Recipe", "RecipeError", "UnknownModelError",
           "UserInputError", "optimize_model", "resolve_recipe"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)

"""The torch layer: one job's stages, recipes, measurement and artifacts. Knows nothing of Celery or the database.

What lives here: ``job`` (the outline of one job: resolve → candidates → choose → measure → publish),
the stage modules ``plan``, ``candidates`` (with ``chain``), ``choose``, ``evaluate``, ``publish`` and
``result``; ``recipes`` (recipes as data), ``measure`` (bytes, latency, metrics), ``artifacts`` (the
``.mpz`` format and immutable objects), ``spec`` (``ModelSpec``/``TaskData``), ``weights``, ``limits``;
and the folders ``sources/`` (where models come from), ``runtimes/`` (torch, ONNX Runtime, OpenVINO) and
``techniques/`` (quantization, pruning, distillation, sensitivity, training).

What it may import: torch and the runtimes' toolkits, ``modelpress.errors``, ``filemodes``, ``store`` and
``settings``; never ``workers``, ``tasks``, ``models_db``, ``api`` or the CLI. The built-in zoo is reached
only through the registered source (entry points). Importing ``modelpress.optimize`` (or its
``recipes`` module) does not import torch, so a producer can validate recipes cheaply; the names below
load their modules on first use.

Example:
    >>> from modelpress.optimize import optimize_model, resolve_recipe  # doctest: +SKIP
    >>> optimize_model(model_name="digits_cnn", recipe=resolve_recipe("dynamic-int8"),
    ...                engine="fbgemm", store="/tmp/mp")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

from modelpress.errors import ModelLoadError, RecipeError, UnknownModelError, UserInputError
from modelpress.optimize.recipes import Recipe, resolve_recipe

_LAZY = {"OptimizeResult": "modelpress.optimize.result", "optimize_model": "modelpress.optimize.job"}

__all__ = ["ModelLoadError", "OptimizeResult", "Recipe", "RecipeError", "UnknownModelError",
           "UserInputError", "optimize_model", "resolve_recipe"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)

"""Techniques: what each recipe step does to a model (quantize, prune, fine-tune, distill), and their registry.

What lives here:

- ``registry``: config type → handler, plus the types handlers exchange (``StepContext``, ``StepOutput``,
  ``StepHandler``) and the entry points ``apply_step`` / ``rebuild_step`` / ``handler_for`` / ``handlers``.
  It imports none of the technique modules, not even inside a function.
- ``quantization``, ``pruning``, ``distillation``: the technique modules; each registers its handlers
  with ``registry.register_handler`` when it is imported.
- ``sensitivity`` (per-layer quantization sensitivity) and ``training`` (the shared training loop):
  helpers of the techniques.

What a module here may import: torch, ``optimize.measure``, ``optimize.recipes``, ``optimize.backends``, the
``optimize.spec`` types and ``modelpress.errors`` (and each other, the registry included). Never Celery, the
database, the runtimes or the pipeline: those import techniques, not the other way round.

This ``__init__`` imports every technique module, and Python runs it before any of its submodules, so whoever
imports ``modelpress.optimize.techniques.registry`` (or any technique) finds every built-in handler registered.

Example:
    >>> from modelpress.optimize.recipes import DynamicQuantConfig
    >>> from modelpress.optimize.techniques.registry import handlers
    >>> DynamicQuantConfig in handlers()
    True
"""

from __future__ import annotations

# Each technique registers its handlers on import.
from modelpress.optimize.techniques import distillation, pruning, quantization  # noqa: F401

__all__ = ["distillation", "pruning", "quantization"]

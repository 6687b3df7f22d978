"""Techniques: what each recipe step does to a model (quantize, prune, fine-tune, distill), and their registry.

What lives here:

- ``registry``: config type → handler, plus the types handlers exchange (``StepContext``, ``StepOutput``,
  ``StepHandler``) and the entry points ``apply_step`` / ``rebuild_step`` / ``handler_for`` / ``handlers``.
  It imports none of the technique modules, not even inside a function.
- ``quantization``, ``pruning``, ``distillation``: the technique modules; each registers its handlers
  with ``registry.register_handler`` when it is imported.
- ``transformer_pruning`` (``prune_transformer``: layers, heads, FFN neurons by importance on data) over
  ``transformer_graph`` (finding and cutting them in an FX graph), and ``distill_float`` (distillation from the
  float model for any source, with hidden-state matching, validation, progress and resume); ``prune_level``
  (``prune``: one level, handed to ``prune_transformer`` or ``prune_structured`` by what the model is).
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
from modelpress.optimize.techniques import (distill_float, distillation, prune_level, pruning,  # noqa: F401
                                            quantization, transformer_pruning)

__all__ = ["distill_float", "distillation", "prune_level", "pruning", "quantization", "transformer_pruning"]

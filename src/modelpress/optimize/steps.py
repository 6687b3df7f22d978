"""Step handlers: what each recipe step does to a model, found through a config→handler registry.

A handler turns one model into another and never mutates its input (``apply_step`` hands it a deep
copy, so a handler cannot break that promise by accident). It returns JSON-able ``meta`` describing
what it did (e.g. which layers stayed float), which is stored in the artifact so that ``rebuild`` can
re-create the exact module structure when the artifact is loaded.

Example:
    >>> from modelpress.optimize.recipes import DynamicQuantConfig
    >>> DynamicQuantConfig in handlers()
    True
"""

from __future__ import annotations

import torch
from torch import nn

# The registry lives in its own module so technique modules can import it without importing this one.
from modelpress.optimize.step_registry import (  # noqa: F401 - re-exported: callers import them from here
    StepContext,
    StepHandler,
    StepOutput,
    apply_step,
    handler_for,
    handlers,
    rebuild_step,
    register_handler,
)

# Technique modules register their handlers on import (they import step_registry, never this module,
# so there is no circle); importing them here means any code that can apply a step can apply every one.
from modelpress.optimize import distillation, pruning, quantization  # noqa: F401,E402  isort: skip


# ------------------------------------------------------------------------------- handlers
def global_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero entries over all float weight tensors named ``*weight``."""
    zeros = total = 0
    for k, v in model.state_dict().items():
        if k.endswith("weight") and isinstance(v, torch.Tensor) and v.is_floating_point():
            zeros += int((v == 0).sum())
            total += v.numel()
    return zeros / total if total else 0.0


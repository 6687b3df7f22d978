"""The torch runtime's ``Exported.handle``: a module plus what its ``.mpz`` needs to be rebuilt.

Kept apart from ``torch_rt`` so that the whole-recipe build (``torch_recipe``) and the candidate stage can
make one without importing the adapter.

Example:
    >>> from torch import nn
    >>> TorchHandle(nn.Linear(2, 2)).steps
    []
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass
class TorchHandle:
    """A torch model plus what its ``.mpz`` needs to be rebuilt: prior steps, their metas, the base manifest.

    ``context`` is the pipeline's ``StepContext`` (spec, data, engine) for the quantization step handler; a
    caller without one gets a minimal context built from the calibration batches.
    """

    module: nn.Module
    steps: list[dict[str, Any]] = field(default_factory=list)
    steps_meta: list[dict[str, Any]] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    context: Any = None


__all__ = ["TorchHandle"]

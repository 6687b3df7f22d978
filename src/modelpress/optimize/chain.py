"""The recipe's technique steps in order, on torch: each step's input model and its output kept.

Every runtime starts from the same chain: the torch runtime runs all of a recipe's steps here; ONNX
Runtime and OpenVINO run the steps before the quantization step here and quantize with their own
toolchain. Keeping each step's input lets a fallback re-run the chain from one step with other settings.

Example:
    >>> from torch import nn
    >>> StepChain([nn.Linear(2, 2)], []).metas
    []
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from modelpress.optimize.backends import is_quantized_module
from modelpress.optimize.recipes import StepConfig
from modelpress.optimize.techniques.registry import StepContext, StepOutput, apply_step


def is_quantized_model(model: nn.Module) -> bool:
    """Whether any module of ``model`` is a quantized (int8 kernel) module."""
    return any(is_quantized_module(m) for m in model.modules())


@dataclass
class StepChain:
    """The state of the step chain: the model before each step, each step's output."""

    inputs: list[nn.Module]
    outputs: list[StepOutput]

    @property
    def model(self) -> nn.Module:
        return self.outputs[-1].model if self.outputs else self.inputs[0]

    @property
    def metas(self) -> list[dict[str, Any]]:
        return [o.meta for o in self.outputs]

    def last_float(self) -> nn.Module:
        """The last float model of the chain: FLOPs and sparsity are read there (int8 kernels are not counted)."""
        last = self.inputs[0]
        for o in self.outputs:
            if not is_quantized_model(o.model):
                last = o.model
        return last


def run_steps(chain: StepChain, steps: tuple[StepConfig, ...], start: int, ctx: StepContext,
              log: Callable[[str], None]) -> StepChain:
    """Apply ``steps[start:]`` to ``chain`` cut after step ``start - 1``; returns the new chain."""
    inputs, outputs = list(chain.inputs[: start + 1]), list(chain.outputs[:start])
    for i in range(start, len(steps)):
        log(f"step {i + 1}/{len(steps)}: {steps[i].type}")
        out = apply_step(inputs[i], steps[i], ctx)
        outputs.append(out)
        inputs.append(out.model)
    return StepChain(inputs[: len(steps)], outputs)


__all__ = ["StepChain", "is_quantized_model", "run_steps"]

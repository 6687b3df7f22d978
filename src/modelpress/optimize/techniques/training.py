"""One small, deterministic training loop shared by the fine-tune and distillation steps.

The loop knows nothing about *what* is learned: the caller passes ``loss_fn(outputs, idx)``, where
``idx`` are the indices of the current mini-batch into the training set, so labels, teacher logits or
reference outputs are looked up by index (computed once, not per epoch).

Example:
    >>> import torch
    >>> from torch import nn
    >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> model = fit(nn.Linear(4, 2), x, lambda out, idx: nn.functional.cross_entropy(out, y[idx]),
    ...             epochs=2, lr=1e-2, batch_size=16, seed=0).model
    >>> model.training
    False
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from modelpress.errors import UserInputError
from modelpress.optimize.measure import batch_of, n_samples
from modelpress.optimize.spec import Inputs

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class FitResult:
    """The trained model (eval mode) and the mean training loss of each epoch."""

    model: nn.Module
    epoch_losses: list[float] = field(default_factory=list)


def is_quantized(model: nn.Module) -> bool:
    """True if any submodule is a converted int8 module (those cannot be trained).

    Example:
        >>> is_quantized(torch.nn.Linear(2, 2))
        False
    """
    return any(type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized"))
               for m in model.modules())


def require_trainable(model: nn.Module, step: str) -> None:
    """Refuse models that cannot be trained, with a message that says how to fix the recipe.

    Example:
        >>> require_trainable(torch.nn.Linear(2, 2), "finetune")
    """
    if is_quantized(model):
        raise UserInputError(f"{step} cannot train an int8-converted model: put the {step} step before "
                             "quantize_static/quantize_dynamic in the recipe (or use the qat step)")
    if not any(p.requires_grad and p.is_floating_point() for p in model.parameters()):
        raise UserInputError(f"{step}: the model has no trainable float parameters")


def fit(model: nn.Module, inputs: Inputs, loss_fn: LossFn, *, epochs: int, lr: float, batch_size: int,
        seed: int, log: Callable[[str], None] = lambda m: None) -> FitResult:
    """Train ``model`` in place with Adam over shuffled mini-batches; returns it in eval mode.

    Deterministic for a given ``seed`` on one thread: the shuffling has its own generator and the global
    RNG (dropout) is seeded too, so a student trained alone and a distilled student see the same batches.

    Example:
        >>> import torch
        >>> x = torch.randn(32, 3)
        >>> r = fit(torch.nn.Linear(3, 3), x, lambda out, idx: ((out - x[idx]) ** 2).mean(),
        ...         epochs=3, lr=1e-2, batch_size=8, seed=1)
        >>> len(r.epoch_losses)
        3
    """
    n = n_samples(inputs)
    if n == 0:
        raise UserInputError("training data is empty")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses: list[float] = []
    model.train()
    try:
        for epoch in range(epochs):
            perm = torch.randperm(n, generator=g)
            total, batches = 0.0, 0
            for i in range(0, n, batch_size):
                idx = perm[i : i + batch_size]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(*batch_of_idx(inputs, idx)), idx)
                if not torch.isfinite(loss):
                    # A diverging run would silently produce garbage weights; stop with the knob to turn.
                    raise UserInputError(f"training diverged (loss {float(loss)} in epoch {epoch + 1}); lower lr={lr}")
                loss.backward()
                opt.step()
                total += float(loss.detach())
                batches += 1
            losses.append(total / batches)
            log(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}")
    finally:
        model.eval()
    return FitResult(model, losses)


def batch_of_idx(inputs: Inputs, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Rows ``idx`` of every input tensor (inputs may be one tensor or a tuple, e.g. ids + mask)."""
    if isinstance(inputs, tuple):
        return tuple(t[idx] for t in inputs)
    return (inputs[idx],)


@torch.no_grad()  # not inference_mode: its tensors cannot be used as targets in autograd later
def outputs_of(model: nn.Module, inputs: Inputs, *, batch_size: int = 256) -> torch.Tensor:
    """A frozen model's outputs over all inputs (eval mode; a plain tensor usable as a training target).

    Example:
        >>> outputs_of(torch.nn.Linear(3, 2).eval(), torch.randn(5, 3)).shape
        torch.Size([5, 2])
    """
    if model.training:
        raise ValueError("outputs_of needs a model in eval mode (dropout/BN statistics would change the targets)")
    outs = []
    for i in range(0, n_samples(inputs), batch_size):
        out = model(*batch_of(inputs, i, i + batch_size))
        outs.append(out.dequantize() if out.is_quantized else out)
    return torch.cat(outs).float()


__all__ = ["FitResult", "batch_of_idx", "fit", "is_quantized", "outputs_of", "require_trainable"]

"""The step registry: config type → handler, and the types handlers exchange (no technique imported here).

A handler turns one model into another and never mutates its input (``apply_step`` hands it a deep
copy, so a handler cannot break that promise by accident). It returns JSON-able ``meta`` describing
what it did (e.g. which layers stayed float), which is stored in the artifact so that ``rebuild`` can
re-create the exact module structure when the artifact is loaded.

The technique modules (``quantization``, ``pruning``, ``distillation``) import this module to register their
handlers; this module imports none of them, not even inside a function. The package ``__init__`` imports
them all, and Python runs it before this module, so every built-in handler is registered by the time anyone
can call ``handler_for``.

Example:
    >>> from modelpress.optimize.recipes import DynamicQuantConfig
    >>> from modelpress.optimize.techniques.registry import handler_for
    >>> type(handler_for(DynamicQuantConfig())).__name__
    'DynamicQuantHandler'
"""

from __future__ import annotations

import copy
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, TypeVar

import torch
from torch import nn

from modelpress.optimize.backends import QuantBackend, get_backend
from modelpress.optimize.recipes import StepConfig
from modelpress.optimize.spec import ModelSpec, TaskData


@dataclass
class StepContext:
    """What a handler may use besides the model: the spec, its data, the engine, the float reference."""

    spec: ModelSpec
    data: TaskData
    engine: str
    backend: QuantBackend = field(default_factory=get_backend)
    seed: int = 0
    reference: nn.Module | None = None
    log: Callable[[str], None] = lambda msg: None
    #: Called by a training step as it goes with one JSON-able dict, e.g. ``{"step": "distill_float",
    #: "iteration": 120, "of": 600, "loss": 0.031, "validation": 0.982, "elapsed_s": 41.2}``; the task shows the
    #: last one in the job row (``modelpress show``/``wait``) and in Flower.
    progress: Callable[[dict[str, Any]], None] = lambda p: None
    #: A folder that survives a worker restart, one per job (keyed by the artifact key): a training step saves
    #: its state there and resumes from it, so a redelivered job does not train from the start. None: no resume.
    checkpoint_dir: Path | None = None
    #: The validation metric this step's output must reach to be of use (a search's budget on a level after
    #: the first): a training step may stop once it is clearly out of reach. None: train to the step's bounds.
    target: float | None = None


@dataclass
class StepOutput:
    model: nn.Module
    meta: dict[str, Any] = field(default_factory=dict)


class StepHandler(Protocol):
    def apply(self, model: nn.Module, cfg: Any, ctx: StepContext) -> StepOutput: ...

    def rebuild(self, model: nn.Module, cfg: Any, meta: dict[str, Any], *, engine: str) -> nn.Module:
        """Re-create the structure ``apply`` produced (weights are loaded afterwards)."""
        ...


_HANDLERS: dict[type[StepConfig], StepHandler] = {}
H = TypeVar("H")


def register_handler(cfg_cls: type[StepConfig]) -> Callable[[H], H]:
    def deco(handler_cls: H) -> H:
        # Two handlers for one step type would make the winner depend on import order: refuse.
        existing = _HANDLERS.get(cfg_cls)
        if existing is not None and type(existing).__qualname__ != getattr(handler_cls, "__qualname__", None):
            raise ValueError(f"step type {cfg_cls.type!r} already has handler {type(existing).__qualname__}")
        _HANDLERS[cfg_cls] = handler_cls()  # type: ignore[operator]
        return handler_cls

    return deco


def handlers() -> dict[type[StepConfig], StepHandler]:
    # The package __init__ has imported every technique before this module could be used.
    return dict(_HANDLERS)


def handler_for(cfg: StepConfig) -> StepHandler:
    try:
        return _HANDLERS[type(cfg)]
    except KeyError:
        raise NotImplementedError(f"no handler registered for step type {cfg.type!r}") from None


def apply_step(model: nn.Module, cfg: StepConfig, ctx: StepContext) -> StepOutput:
    """Run one step on a copy of ``model``; the result is in eval mode."""
    out = handler_for(cfg).apply(copy.deepcopy(model), cfg, ctx)
    out.model.eval()
    return out


def rebuild_step(model: nn.Module, cfg: StepConfig, meta: dict[str, Any], *, engine: str) -> nn.Module:
    return handler_for(cfg).rebuild(model, cfg, meta, engine=engine).eval()


__all__ = ["StepContext", "StepOutput", "StepHandler", "register_handler", "handlers", "handler_for", "apply_step", "rebuild_step"]

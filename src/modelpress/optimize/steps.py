"""The step-config base of recipes: ``StepConfig``, the ``type`` registry, and parsing one step.

Torch-free, like ``recipes``: a producer parses recipes without torch. ``recipes`` re-exports every name here,
and the step types themselves live in ``recipes`` (the quantization and pruning classics) and
``compress_steps`` (structured pruning of transformers, pruning levels, distillation from the float model).

Example:
    >>> from modelpress.optimize.steps import parse_step
    >>> import modelpress.optimize.recipes  # registers the built-in step types
    >>> parse_step({"type": "quantize_dynamic"}).type
    'quantize_dynamic'
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from modelpress.errors import RecipeError


class StepConfig(BaseModel):
    """Base of every step config: frozen, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: ClassVar[str] = ""
    version: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **self.model_dump(mode="json")}


_STEP_TYPES: dict[str, type[StepConfig]] = {}
S = TypeVar("S", bound=type[StepConfig])


def register_step(name: str, *, version: int = 1):
    """Class decorator: make a ``StepConfig`` subclass parseable under ``{"type": name}``."""

    def deco(cls: S) -> S:
        if name in _STEP_TYPES and _STEP_TYPES[name] is not cls:
            raise ValueError(f"step type {name!r} registered twice")
        cls.type = name
        cls.version = version
        _STEP_TYPES[name] = cls
        return cls

    return deco


def step_types() -> dict[str, type[StepConfig]]:
    """The registered step types, by name."""
    return dict(_STEP_TYPES)


def format_validation_error(prefix: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        inner = (e.get("ctx") or {}).get("error")
        if isinstance(inner, RecipeError):
            parts.append(str(inner))  # a step's own error already names its field (steps.N.field)
            continue
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        parts.append(f"{prefix}{loc}: {e['msg']}")
    return "; ".join(parts)


def parse_step(data: Any, *, where: str = "step") -> StepConfig:
    """Parse one step dict (``{"type": ..., **params}``) into its registered config."""
    if isinstance(data, StepConfig):
        return data
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping with a 'type', got {type(data).__name__}")
    if "type" not in data:
        raise RecipeError(f"{where}.type: missing; known types: {', '.join(sorted(_STEP_TYPES))}")
    kind = data["type"]
    cls = _STEP_TYPES.get(kind)
    if cls is None:
        raise RecipeError(f"{where}.type: unknown step type {kind!r}; known types: {', '.join(sorted(_STEP_TYPES))}")
    params = {k: v for k, v in data.items() if k != "type"}
    try:
        return cls.model_validate(params)
    except ValidationError as e:
        raise RecipeError(format_validation_error(f"{where}.", e)) from None


__all__ = ["StepConfig", "format_validation_error", "parse_step", "register_step", "step_types"]

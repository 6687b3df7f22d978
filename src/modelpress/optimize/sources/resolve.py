"""From what a job names (a registered ``model_name`` or a ``ModelRef``) to a float model, spec and content id.

``optimize_model`` calls ``resolve`` once at its top; everything after it is the same for every source.

Example:
    >>> r = resolve(model_name="mlp")  # doctest: +SKIP
    >>> r.spec.name, len(r.content)  # doctest: +SKIP
    ('mlp', 64)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from modelpress.errors import UserInputError
from modelpress.optimize.sources import get_source
from modelpress.optimize.sources.base import check_problems
from modelpress.optimize.sources.ref import ModelRef, ModelRefError
from modelpress.optimize.spec import ModelSpec


@dataclass
class Resolved:
    model: nn.Module
    spec: ModelSpec
    content: str
    ref: ModelRef | None  # None for a plain registered model_name (today's manifests stay as they were)


def as_ref(model_ref: ModelRef | dict[str, Any] | str) -> ModelRef:
    """A ``ModelRef`` from a ref, its ``to_dict()`` form, or ``parse_model_ref`` text.

    Example:
        >>> as_ref("mlp").kind
        'registered'
    """
    from modelpress.optimize.sources.ref import parse_model_ref

    if isinstance(model_ref, ModelRef):
        return model_ref
    if isinstance(model_ref, str):
        return parse_model_ref(model_ref)
    return ModelRef.from_dict(model_ref)


def refuse_unsupported_steps(ref: ModelRef, step_types: list[str]) -> None:
    """Raise ``UserInputError`` naming the first step this source cannot take (training steps need ``data.train``).

    Example:
        >>> refuse_unsupported_steps(as_ref("mlp"), ["qat"])  # registered models take every step
    """
    src = get_source(ref.kind)
    for t in step_types:
        reason = src.supports(t, has_train=ref.has_train)
        if reason:
            raise UserInputError(f"model {ref.display_name}: {reason}")


def resolve(*, model_name: str | None = None, model_ref: ModelRef | dict[str, Any] | str | None = None,
            weights: str | None = None, allowlist: tuple[str, ...] = (), max_bytes: int = 2 * 1024**3,
            cache_dir: Path | None = None) -> Resolved:
    """Load the float model (eval mode) and its spec; ``content`` is the reuse key part for the model."""
    if model_ref is None:
        if not model_name:
            raise ModelRefError("give model_name or model_ref")
        model, spec, content = get_source("registered").materialize(
            model_name, weights=weights, allowlist=allowlist, max_bytes=max_bytes, cache_dir=cache_dir)
        return Resolved(model, spec, content, None)
    ref = as_ref(model_ref)
    if ref.kind == "registered":
        model, spec, content = get_source("registered").materialize(
            ref.name, weights=ref.weights or weights, allowlist=allowlist, max_bytes=max_bytes, cache_dir=cache_dir)
        # Staging sets content_sha256 over the factory's code and the weights (issue 10 item 6).
        return Resolved(model, spec, ref.content_sha256 or content, ref)
    src = get_source(ref.kind)
    check_problems(src, ref)
    loaded = src.load(ref)
    if loaded.model.training:
        raise RuntimeError(f"source {ref.kind} returned a model in training mode")
    return Resolved(loaded.model, loaded.spec, src.content_id(ref), ref)


def build_for_artifact(ref: ModelRef, *, allowlist: tuple[str, ...] = ()) -> nn.Module:
    """The architecture (no weights) an artifact of ``ref`` was made from, for ``load_artifact``.

    Example:
        >>> type(build_for_artifact(as_ref("mlp"))).__name__
        'SeedMLP'
    """
    src = get_source(ref.kind)
    if ref.kind == "registered":
        return src.build_allowed(ref, allowlist=allowlist)
    missing = [f"{label} {p}" for label, p in src.files(ref)
               if not label.endswith("data") and not Path(p).exists()]
    if missing:
        from modelpress.errors import ModelLoadError

        raise ModelLoadError(f"cannot rebuild {ref.display_name}: {', '.join(missing)} not found here; "
                             "pass resolve_ref= (e.g. modelpress.load fetches store refs) or copy the files")
    return src.build(ref)


__all__ = ["Resolved", "as_ref", "build_for_artifact", "refuse_unsupported_steps", "resolve"]

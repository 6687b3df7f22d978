"""Registered factories (entry points ``modelpress.models`` or allow-listed ``module:function``) as a source.

The zoo's resolution and weight loading (``optimize.zoo``) behind the ``ModelSource`` interface: a
registered spec brings its own data, metric and latency inputs; ``weights`` (optional) replaces the
built-in weights.

Example:
    >>> from modelpress.optimize.sources import get_source, parse_model_ref  # doctest: +SKIP
    >>> get_source("registered").load(parse_model_ref("mlp")).spec.name  # doctest: +SKIP
    'mlp'
"""

from __future__ import annotations

from pathlib import Path

from modelpress.optimize.sources.base import LoadedModel, ModelSource
from modelpress.optimize.sources.ref import ModelRef
from modelpress.optimize.zoo import ModelSpec, materialize, resolve_model


class RegisteredSource(ModelSource):
    """Today's zoo: a name resolves to a ``ModelSpec`` (never user code outside the allow-list)."""

    allowlist: tuple[str, ...] = ()

    def resolve(self, ref: ModelRef, *, allowlist: tuple[str, ...] = ()) -> ModelSpec:
        return resolve_model(ref.name, allowlist=allowlist)

    def load(self, ref: ModelRef, *, allowlist: tuple[str, ...] = (), max_bytes: int = 2 * 1024**3,
             cache_dir: Path | None = None) -> LoadedModel:
        spec = self.resolve(ref, allowlist=allowlist)
        model, _ = materialize(spec, weights=ref.weights, max_bytes=max_bytes, cache_dir=cache_dir)
        return LoadedModel(model, spec)


__all__ = ["RegisteredSource"]

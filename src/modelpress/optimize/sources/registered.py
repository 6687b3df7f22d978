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

from torch import nn

from modelpress.optimize.sources.base import LoadedModel, ModelSource
from modelpress.optimize.sources.ref import ModelRef
from modelpress.optimize.zoo import ModelSpec, materialize, resolve_model


class RegisteredSource(ModelSource):
    """Today's zoo: a name resolves to a ``ModelSpec`` (never user code outside the allow-list)."""

    def resolve(self, name: str, *, allowlist: tuple[str, ...] = ()) -> ModelSpec:
        return resolve_model(name, allowlist=allowlist)

    def materialize(self, name: str, *, weights: str | None, allowlist: tuple[str, ...] = (),
                    max_bytes: int = 2 * 1024**3, cache_dir: Path | None = None) -> tuple[nn.Module, ModelSpec, str]:
        """(float model in eval mode, spec, content id): the built-in weights or ``weights``."""
        spec = self.resolve(name, allowlist=allowlist)
        model, content = materialize(spec, weights=weights, max_bytes=max_bytes, cache_dir=cache_dir)
        return model, spec, content

    def load(self, ref: ModelRef, *, allowlist: tuple[str, ...] = (), max_bytes: int = 2 * 1024**3,
             cache_dir: Path | None = None) -> LoadedModel:
        model, spec, _ = self.materialize(ref.name, weights=ref.weights, allowlist=allowlist, max_bytes=max_bytes,
                                          cache_dir=cache_dir)
        return LoadedModel(model, spec)

    def build_allowed(self, ref: ModelRef, *, allowlist: tuple[str, ...] = ()) -> nn.Module:
        """The architecture without weights (for ``load_artifact``)."""
        return self.resolve(ref.name, allowlist=allowlist).build().eval()


__all__ = ["RegisteredSource"]

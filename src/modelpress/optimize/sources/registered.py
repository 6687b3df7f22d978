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

from modelpress.optimize.builtin_weights import builtin_content_id
from modelpress.optimize.sources.base import LoadedModel, ModelSource
from modelpress.optimize.sources.ref import ModelRef
from modelpress.optimize.zoo import ModelSpec, materialize, resolve_model


class RegisteredSource(ModelSource):
    """Today's zoo: a name resolves to a ``ModelSpec`` (never user code outside the allow-list)."""

    def resolve(self, name: str, *, allowlist: tuple[str, ...] = ()) -> ModelSpec:
        return resolve_model(name, allowlist=allowlist)

    def materialize(self, name: str, *, weights: str | None, allowlist: tuple[str, ...] = (),
                    max_bytes: int = 2 * 1024**3, cache_dir: Path | None = None) -> tuple[nn.Module, ModelSpec, str]:
        """(float model in eval mode, spec, content id): the built-in weights or ``weights``.

        For the built-in weights the content id is the producer's ``builtin_content_id(name)`` (package
        version, factory code, shipped weights' sha256): the one the job row was submitted under, so the
        artifact key names the very weights this worker loaded (issue 20 item 12).

        Example:
            >>> _, _, content = get_source("registered").materialize("digits_cnn", weights=None)  # doctest: +SKIP
            >>> content == builtin_content_id("digits_cnn")  # doctest: +SKIP
            True
        """
        spec = self.resolve(name, allowlist=allowlist)
        model, content = materialize(spec, weights=weights, max_bytes=max_bytes, cache_dir=cache_dir)
        if weights is None:
            # No owning distribution (no producer id either): keep the spec's own built-in id.
            content = builtin_content_id(name) or content
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

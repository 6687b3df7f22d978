"""Registered factories (entry points ``modelpress.models`` or allow-listed ``module:function``) as a source.

A model is named by a registered entry point (group ``modelpress.models``: the built-in zoo,
``modelpress.zoo``, and any installed package's) or by ``package.module:attr`` whose module is inside
``Settings.factory_allowlist``. The name resolves to a ``ModelSpec``, which brings its own data, metric
and latency inputs; ``weights`` (optional) replaces the built-in weights, read without unpickling code
(``optimize.weights``). The pipeline and ``optimize.artifacts`` reach the zoo only through here.

Example:
    >>> spec = resolve_model("mlp")
    >>> spec.metric
    'top1_agreement'
    >>> from modelpress.optimize.sources import get_source, parse_model_ref  # doctest: +SKIP
    >>> get_source("registered").load(parse_model_ref("mlp")).spec.name  # doctest: +SKIP
    'mlp'
"""

from __future__ import annotations

import hashlib
import importlib
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from torch import nn

from modelpress.errors import ModelLoadError, UnknownModelError
from modelpress.optimize.sources.base import LoadedModel, ModelSource
from modelpress.optimize.sources.ref import ModelRef
from modelpress.optimize.spec import ModelSpec
from modelpress.optimize.weights import load_weights, read_state_dict
from modelpress.store import file_sha256
from modelpress.zoo.builtin_weights import builtin_content_id, shipped_weights_sha256


# ----------------------------------------------------------------------------- resolution
def entry_point_specs() -> dict[str, EntryPoint]:
    """The installed entry points of group ``modelpress.models``, by name (none loaded)."""
    return {ep.name: ep for ep in entry_points(group="modelpress.models")}


def registered_models() -> list[str]:
    """Names of the installed, registered model factories."""
    return sorted(entry_point_specs())


def resolve_model(name: str, *, allowlist: tuple[str, ...] = ()) -> ModelSpec:
    """Turn a model name into its ``ModelSpec``, refusing anything not registered or allow-listed."""
    eps = entry_point_specs()
    if name in eps:
        obj = eps[name].load()
    elif ":" in name:
        module, _, attr = name.partition(":")
        if not any(module == p or module.startswith(p + ".") for p in allowlist):
            raise UnknownModelError(
                f"model factory {name!r} is not allowed: its module is outside MODELPRESS_FACTORY_ALLOWLIST "
                f"({', '.join(allowlist) or 'empty'})"
            )
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise UnknownModelError(f"model factory {name!r} could not be imported: {e}") from None
    else:
        raise UnknownModelError(f"unknown model {name!r}; registered models: {', '.join(sorted(eps))}")
    spec = obj() if callable(obj) and not isinstance(obj, ModelSpec) else obj
    if not isinstance(spec, ModelSpec):
        raise UnknownModelError(f"model factory {name!r} did not give a ModelSpec (got {type(spec).__name__})")
    return spec


def materialize(spec: ModelSpec, *, weights: str | None, max_bytes: int, cache_dir: Path | None) -> tuple[nn.Module, str]:
    """Build the float model with its weights; returns (model in eval mode, content id).

    The content id is the sha256 of the weights file, or the built-in id for built-in weights (with the
    shipped weights file's sha256 when the spec has one). ``RegisteredSource.materialize``, which knows the
    name the model was asked for, replaces the latter with the producer's ``builtin_content_id``.
    """
    model = spec.build()
    if weights is not None:
        load_weights(model, read_state_dict(weights, max_bytes=max_bytes))
        content = file_sha256(weights)
    elif spec.pretrained is not None:
        spec.pretrained(model, cache_dir)
        builtin = spec.builtin_id
        if spec.shipped_weights is not None:
            builtin += f":weights={shipped_weights_sha256(spec.shipped_weights)}"
        content = hashlib.sha256(builtin.encode()).hexdigest()
    else:
        raise ModelLoadError(f"model {spec.name!r} has no built-in weights: give a weights file")
    return model.eval(), content


# ----------------------------------------------------------------------------- the source
class RegisteredSource(ModelSource):
    """A name resolves to a ``ModelSpec`` (never user code outside the allow-list)."""

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


__all__ = ["RegisteredSource", "entry_point_specs", "materialize", "registered_models", "resolve_model"]

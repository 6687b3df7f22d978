"""Run one recipe on one model for one engine, measuring everything before and after.

This is the whole job as a library call (no Celery, no database):

    >>> from modelpress.optimize.pipeline import optimize_model  # doctest: +SKIP
    >>> r = optimize_model(model_name="mlp", recipe=resolve_recipe("dynamic-int8"),
    ...                    engine="fbgemm", store="/tmp/store")  # doctest: +SKIP
    >>> r.size_before_bytes / r.size_after_bytes  # doctest: +SKIP
    3.85

The artifact key hashes (model content, recipe, engine, torch version): a second call with the same
inputs, e.g. a redelivered task, finds the stored artifact and result and returns them (``reused``).
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from modelpress.optimize.artifacts import artifact_key, atomic_write_json, save_artifact
from modelpress.optimize.backends import quantized_engine
from modelpress.optimize.errors import ModelLoadError
from modelpress.optimize.measure import (
    LatencyStats,
    compute_metric,
    count_flops,
    count_params,
    measure_latency,
    predict,
)
from modelpress.optimize.recipes import Recipe
from modelpress.optimize.steps import StepContext, apply_step, global_sparsity
from modelpress.optimize.zoo import materialize, resolve_model

RESULT_FORMAT = 1


@dataclass
class OptimizeResult:
    """Every number of one job, all measured; JSON-able via ``to_dict``."""

    status: str  # "succeeded" | "rejected"
    reason: str | None
    model_name: str
    model_sha256: str
    recipe: dict[str, Any]
    recipe_sha256: str
    engine: str
    torch_version: str
    arch: str
    artifact_key: str
    artifact_path: str
    float_artifact_path: str
    size_before_bytes: int
    size_after_bytes: int
    metric_name: str
    metric_before: float
    metric_after: float
    latency_before: list[dict[str, Any]]
    latency_after: list[dict[str, Any]]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    sparsity_after: float
    float_layers: list[str]
    steps_meta: list[dict[str, Any]]
    eval_description: str
    reused: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OptimizeResult":
        return cls(**d)

    def latency(self, which: str, batch_size: int) -> dict[str, Any] | None:
        for s in getattr(self, f"latency_{which}"):
            if s["batch_size"] == batch_size:
                return s
        return None


def _is_quantized(model: nn.Module) -> bool:
    return any(type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized"))
               for m in model.modules())


def optimize_model(*, model_name: str, recipe: Recipe, engine: str, store: str | Path,
                   weights: str | None = None, allowlist: tuple[str, ...] = (),
                   max_weights_bytes: int = 2 * 1024**3, threads: int = 1, warmup: int = 10,
                   runs: int = 50, log: Callable[[str], None] = lambda m: None) -> OptimizeResult:
    """Optimize ``model_name`` with ``recipe`` for ``engine``; artifacts go under ``store``."""
    store = Path(store)
    spec = resolve_model(model_name, allowlist=allowlist)
    torch.set_num_threads(threads)
    float_model, content = materialize(spec, weights=weights, max_bytes=max_weights_bytes, cache_dir=store / "builtin")
    tv = torch.__version__
    key = artifact_key(content, recipe.sha256, engine, tv)
    result_path = store / "results" / f"{key}.json"
    if result_path.is_file():
        stored = OptimizeResult.from_dict(json.loads(result_path.read_text()))
        if Path(stored.artifact_path).is_file():
            log(f"reusing stored result {key[:12]}")
            stored.reused = True
            return stored

    data = spec.data()
    base_manifest = {"model": {"name": spec.name, "version": spec.version, "content_sha256": content},
                     "engine": engine, "torch_version": tv}
    float_path = store / "float" / f"{spec.name}-{content[:16]}.mpz"
    size_before = save_artifact(float_path, float_model, {**base_manifest, "recipe": {"steps": []}, "steps_meta": []})

    log("measuring the float model")
    ref_out = predict(float_model, data.eval_inputs)
    try:
        metric_before = compute_metric(spec.metric, ref_out, labels=data.eval_labels, reference=ref_out)
    except RuntimeError as e:
        raise ModelLoadError(f"the model's outputs do not fit its labels: {e}") from None
    lat_before = [measure_latency(float_model, spec.make_input(b), warmup=warmup, runs=runs, threads=threads)
                  for b in spec.latency_batches]
    probe = spec.make_input(1)
    params_before, flops_before = count_params(float_model), count_flops(float_model, probe)

    ctx = StepContext(spec=spec, data=data, engine=engine, reference=float_model, log=log)
    with quantized_engine(engine):
        model, metas, last_float = float_model, [], float_model
        for i, cfg in enumerate(recipe.steps):
            log(f"step {i + 1}/{len(recipe.steps)}: {cfg.type}")
            out = apply_step(model, cfg, ctx)
            model = out.model
            metas.append(out.meta)
            if not _is_quantized(model):
                last_float = model
        out_after = predict(model, data.eval_inputs)
        metric_after = compute_metric(spec.metric, out_after, labels=data.eval_labels, reference=ref_out)
        lat_after = [measure_latency(model, spec.make_input(b), warmup=warmup, runs=runs, threads=threads)
                     for b in spec.latency_batches]

        status, reason = "succeeded", None
        if recipe.budget is not None and not recipe.budget.allows(before=metric_before, after=metric_after):
            status = "rejected"
            reason = (f"{spec.metric} fell from {metric_before:.4f} to {metric_after:.4f}, more than the budget "
                      f"allows ({recipe.budget.allowed_drop(metric_before):.4f})")
        # A rejected result is kept (users want to see it) but never under the promoted name.
        art_path = store / ("rejected" if status == "rejected" else "artifacts") / f"{key}.mpz"
        manifest = {**base_manifest, "recipe": recipe.to_dict(), "steps_meta": metas}
        size_after = save_artifact(art_path, model, manifest)

    float_layers = sorted({n for m in metas for n in m.get("float_modules", [])})
    result = OptimizeResult(
        status=status, reason=reason, model_name=spec.name, model_sha256=content, recipe=recipe.to_dict(),
        recipe_sha256=recipe.sha256, engine=engine, torch_version=tv, arch=platform.machine(),
        artifact_key=key, artifact_path=str(art_path), float_artifact_path=str(float_path),
        size_before_bytes=size_before, size_after_bytes=size_after, metric_name=spec.metric,
        metric_before=metric_before, metric_after=metric_after,
        latency_before=[s.to_dict() for s in lat_before], latency_after=[s.to_dict() for s in lat_after],
        params_before=params_before, params_after=count_params(model), flops_before=flops_before,
        flops_after=count_flops(last_float, probe), sparsity_after=global_sparsity(last_float),
        float_layers=float_layers, steps_meta=metas, eval_description=data.description,
    )
    # Written last: its presence means the artifact above is complete.
    atomic_write_json(result_path, {**result.to_dict(), "reused": False})
    return result


__all__ = ["OptimizeResult", "optimize_model", "LatencyStats"]

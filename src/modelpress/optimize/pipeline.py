"""Run one recipe on one model for one engine, measuring everything before and after.

This is the whole job as a library call (no Celery, no database):

    >>> from modelpress.optimize.pipeline import optimize_model  # doctest: +SKIP
    >>> r = optimize_model(model_name="mlp", recipe=resolve_recipe("dynamic-int8"),
    ...                    engine="fbgemm", store="/tmp/store")  # doctest: +SKIP
    >>> r.size_before_bytes / r.size_after_bytes  # doctest: +SKIP
    3.85

The artifact key hashes (model content, recipe, engine, torch version): a second call with the same
inputs, e.g. a redelivered task, finds the stored artifact and result and returns them (``reused``).

Accuracy budget with fallback: when the recipe's budget is broken and a quantization step is in the
chain, the per-layer sensitivity of that step is *measured* on calibration inputs
(``optimize.sensitivity``), then its most sensitive layers are kept float one more at a time (up to
``Budget.max_float_layers``) until the budget holds. The layers kept float are recorded in the step meta
(``float_modules``, so the artifact rebuilds the same structure) and in ``OptimizeResult.float_layers``;
every trial is in ``extra["fallback"]``. If no trial fits, the job is ``rejected`` with the numbers and
its best-effort artifact is kept under ``rejected/``, never promoted.

Every artifact is reloaded with ``artifacts.load_artifact`` before the result is written, and its outputs
must equal those of the model that was measured (``extra["reload_check"]``).
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn

from modelpress.optimize.artifacts import artifact_key, atomic_write_json, load_artifact, save_artifact
from modelpress.optimize.backends import is_quantized_module, quantized_engine
from modelpress.optimize.errors import ModelLoadError, UserInputError
from modelpress.optimize.measure import (
    LatencyStats,
    batch_of,
    compute_metric,
    count_flops,
    count_params,
    measure_latency,
    n_samples,
    predict,
)
from modelpress.optimize.recipes import Budget, Recipe, StepConfig
from modelpress.optimize.steps import StepContext, StepOutput, apply_step, global_sparsity, handler_for
from modelpress.optimize.zoo import ModelSpec, TaskData, materialize, resolve_model

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
    # Where the artifact runs (issue 11): the runtime that built it (auto: the winner) and its package versions.
    runtime: str = "torch"
    runtime_versions: dict[str, str] = field(default_factory=dict)

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
    return any(is_quantized_module(m) for m in model.modules())


class OnnxExportRequestError(UserInputError, ValueError):
    """An ONNX export that cannot be done for this recipe (e.g. of a torch.ao int8 result)."""


@dataclass
class _Chain:
    """The state of the step chain: the model before each step, each step's output, the float tail."""

    inputs: list[nn.Module]
    outputs: list[StepOutput]

    @property
    def model(self) -> nn.Module:
        return self.outputs[-1].model if self.outputs else self.inputs[0]

    @property
    def metas(self) -> list[dict[str, Any]]:
        return [o.meta for o in self.outputs]

    def last_float(self) -> nn.Module:
        # FLOPs and sparsity are read from the last float model (quantized kernels are not counted).
        last = self.inputs[0]
        for o in self.outputs:
            if not _is_quantized(o.model):
                last = o.model
        return last


def _run_steps(chain: _Chain, steps: tuple[StepConfig, ...], start: int, ctx: StepContext,
               log: Callable[[str], None]) -> _Chain:
    """Apply ``steps[start:]`` to ``chain`` cut after step ``start - 1``; returns the new chain."""
    inputs, outputs = list(chain.inputs[: start + 1]), list(chain.outputs[:start])
    for i in range(start, len(steps)):
        log(f"step {i + 1}/{len(steps)}: {steps[i].type}")
        out = apply_step(inputs[i], steps[i], ctx)
        outputs.append(out)
        inputs.append(out.model)
    return _Chain(inputs[: len(steps)], outputs)


def _eval_batch_size(spec: ModelSpec) -> int:
    # Dynamic int8 quantizes activations per *batch*: evaluate in the batch size the model is served with
    # when the spec says so, so the measured metric is the deployed one.
    return int(spec.extra.get("eval_batch_size", 256))


def _json_safe(extra: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in extra.items():
        try:
            json.dumps(v)
        except TypeError:
            continue  # callables (extra metrics) and other objects are not results
        out[k] = v
    return out


def _sensitivity_inputs(data: TaskData, budget: Budget) -> Any:
    n = min(budget.sensitivity_samples, n_samples(data.calib_inputs))
    if n == 0:
        raise UserInputError("the accuracy-budget fallback measures layer sensitivity on calibration inputs, "
                             "and this model's spec has none; set budget.max_float_layers: 0")
    b = batch_of(data.calib_inputs, 0, n)
    return b[0] if len(b) == 1 else b


def _fallback(chain: _Chain, recipe: Recipe, ctx: StepContext, *, spec: ModelSpec, data: TaskData,
              ref_out: torch.Tensor, metric_before: float, metric_after: float,
              log: Callable[[str], None]) -> tuple[_Chain, float, dict[str, Any]] | None:
    """Keep the most sensitive layers of the last quantization step float until the budget holds.

    Returns the chosen chain, its metric and a JSON-able record, or None when no fallback applies.
    """
    budget = recipe.budget
    assert budget is not None
    qsteps = [i for i, cfg in enumerate(recipe.steps) if hasattr(handler_for(cfg), "sensitivity")]
    if budget.max_float_layers == 0 or not qsteps:
        return None
    i = qsteps[-1]
    cfg = recipe.steps[i]
    handler = handler_for(cfg)
    model_in, out = chain.inputs[i], chain.outputs[i]
    eval_bs = _eval_batch_size(spec)
    inputs = _sensitivity_inputs(data, budget)
    reference = predict(model_in, inputs, batch_size=eval_bs)
    log(f"budget broken ({metric_after:.4f}); measuring per-layer sensitivity of step {i + 1} "
        f"({len(out.meta['quantized_modules'])} layers, {budget.sensitivity_method})")
    report = handler.sensitivity(model_in, out, cfg, ctx, inputs=inputs, reference=reference,  # type: ignore[attr-defined]
                                 method=budget.sensitivity_method, batch_size=eval_bs)
    ranking = report.ranking()
    # Keeping every layer float is not quantization: leave at least one layer int8.
    limit = min(budget.max_float_layers, len(ranking) - 1)
    trials: list[dict[str, Any]] = [{"float_layers": [], "metric": metric_after, "within_budget": False}]
    best: tuple[float, _Chain] = (metric_after, chain)
    chosen = None
    base_keep = tuple(getattr(cfg, "keep_float", ()))
    for k in range(1, limit + 1):
        keep = base_keep + tuple(ranking[:k])
        trial_cfg = cfg.model_copy(update={"keep_float": keep})
        steps = recipe.steps[:i] + (trial_cfg,) + recipe.steps[i + 1 :]
        trial = _run_steps(chain, steps, i, ctx, log=lambda m: None)
        out_k = predict(trial.model, data.eval_inputs, batch_size=eval_bs)
        metric_k = compute_metric(spec.metric, out_k, labels=data.eval_labels, reference=ref_out)
        ok = budget.allows(before=metric_before, after=metric_k)
        trials.append({"float_layers": list(ranking[:k]), "metric": metric_k, "within_budget": ok})
        log(f"fallback: {k} layer(s) float → {spec.metric} {metric_k:.4f}{' (within budget)' if ok else ''}")
        if metric_k > best[0]:
            best = (metric_k, trial)
        if ok:
            chosen = k
            best = (metric_k, trial)
            break
    record = {"step": i, "sensitivity": report.to_dict(), "trials": trials, "chosen_float_layers": chosen,
              "max_float_layers": budget.max_float_layers}
    return best[1], best[0], record


def optimize_model(*, model_name: str, recipe: Recipe, engine: str, store: str | Path,
                   weights: str | None = None, allowlist: tuple[str, ...] = (),
                   max_weights_bytes: int = 2 * 1024**3, threads: int = 1, warmup: int = 10,
                   runs: int = 50, log: Callable[[str], None] = lambda m: None,
                   onnx_export: Literal["float", "result"] | None = None,
                   verify_reload: bool = True, reuse: bool = True) -> OptimizeResult:
    """Optimize ``model_name`` with ``recipe`` for ``engine``; artifacts go under ``store``.

    ``onnx_export`` also exports the float model (or a float result, e.g. pruned) to ONNX and checks it in
    onnxruntime (``extra["onnx"]``). ``verify_reload`` reloads the saved artifact and requires identical
    outputs (``extra["reload_check"]``).
    """
    store = Path(store)
    spec = resolve_model(model_name, allowlist=allowlist)
    if onnx_export not in (None, "float", "result"):
        raise OnnxExportRequestError(f"onnx_export must be 'float', 'result' or None, not {onnx_export!r}")
    if onnx_export == "result" and any(hasattr(handler_for(c), "sensitivity") for c in recipe.steps):
        raise OnnxExportRequestError(
            "onnx_export='result' cannot export a torch.ao int8 model (torch.onnx has no exporter for its "
            "packed kernels); use onnx_export='float' and quantize the ONNX file with onnxruntime")
    torch.set_num_threads(threads)
    float_model, content = materialize(spec, weights=weights, max_bytes=max_weights_bytes, cache_dir=store / "builtin")
    if recipe.runtime != "torch":  # ONNX Runtime, OpenVINO or auto: its own module (issue 11)
        from modelpress.optimize.runtime_pipeline import optimize_in_runtime

        return optimize_in_runtime(model_name=model_name, spec=spec, recipe=recipe, engine=engine, store=store,
                                   float_model=float_model, content=content, allowlist=allowlist, threads=threads,
                                   warmup=warmup, runs=runs, log=log, verify_reload=verify_reload, reuse=reuse)
    tv = torch.__version__
    key = artifact_key(content, recipe.sha256, engine, tv)
    result_path = store / "results" / f"{key}.json"
    # ``reuse=False`` re-measures (e.g. a nightly run watching for drift) and rewrites the same key.
    if reuse and result_path.is_file():
        stored = OptimizeResult.from_dict(json.loads(result_path.read_text()))
        if Path(stored.artifact_path).is_file():
            log(f"reusing stored result {key[:12]}")
            stored.reused = True
            return stored

    data = spec.data()
    eval_bs = _eval_batch_size(spec)
    # "name" is the reference the model was resolved by (entry point or allow-listed module:attr), so that
    # load_artifact can resolve it again; "spec_name" is the spec's own name.
    base_manifest = {"model": {"name": model_name, "spec_name": spec.name, "version": spec.version,
                               "content_sha256": content},
                     "engine": engine, "torch_version": tv}
    float_path = store / "float" / f"{spec.name}-{content[:16]}.mpz"
    size_before = save_artifact(float_path, float_model, {**base_manifest, "recipe": {"steps": []}, "steps_meta": []})

    log("measuring the float model")
    if float_model.training:
        raise RuntimeError("the float model must be in eval mode before it is measured")
    ref_out = predict(float_model, data.eval_inputs, batch_size=eval_bs)
    try:
        metric_before = compute_metric(spec.metric, ref_out, labels=data.eval_labels, reference=ref_out)
    except RuntimeError as e:
        raise ModelLoadError(f"the model's outputs do not fit its labels: {e}") from None
    lat_before = [measure_latency(float_model, spec.make_input(b), warmup=warmup, runs=runs, threads=threads)
                  for b in spec.latency_batches]
    probe = spec.make_input(1)
    params_before, flops_before = count_params(float_model), count_flops(float_model, probe)

    ctx = StepContext(spec=spec, data=data, engine=engine, reference=float_model, log=log)
    extra: dict[str, Any] = {"model": _json_safe(dict(spec.extra)), "eval_batch_size": eval_bs}
    with quantized_engine(engine):
        chain = _run_steps(_Chain([float_model], []), recipe.steps, 0, ctx, log)
        out_after = predict(chain.model, data.eval_inputs, batch_size=eval_bs)
        metric_after = compute_metric(spec.metric, out_after, labels=data.eval_labels, reference=ref_out)

        status, reason = "succeeded", None
        budget = recipe.budget
        if budget is not None and not budget.allows(before=metric_before, after=metric_after):
            first_metric = metric_after
            fb = _fallback(chain, recipe, ctx, spec=spec, data=data, ref_out=ref_out, metric_before=metric_before,
                           metric_after=metric_after, log=log)
            if fb is not None:
                chain, metric_after, extra["fallback"] = fb
                out_after = predict(chain.model, data.eval_inputs, batch_size=eval_bs)
            if not budget.allows(before=metric_before, after=metric_after):
                status = "rejected"
                reason = (f"{spec.metric} fell from {metric_before:.4f} to {metric_after:.4f}, more than the budget "
                          f"allows ({budget.allowed_drop(metric_before):.4f})")
                if fb is not None:
                    tried = len(fb[2]["trials"]) - 1
                    reason += (f"; keeping the {tried} most sensitive layer(s) float did not fit either "
                               f"(without fallback: {first_metric:.4f}; max_float_layers={budget.max_float_layers})")
        model, metas = chain.model, chain.metas
        if model.training:
            raise RuntimeError("the optimized model must be in eval mode before it is measured")
        lat_after = [measure_latency(model, spec.make_input(b), warmup=warmup, runs=runs, threads=threads)
                     for b in spec.latency_batches]
        for name, fn in spec.extra.get("extra_metrics", {}).items():
            extra.setdefault("metrics_after", {})[name] = float(fn(out_after, ref_out))

        # A rejected result is kept (users want to see it) but never under the promoted name.
        art_path = store / ("rejected" if status == "rejected" else "artifacts") / f"{key}.mpz"
        manifest = {**base_manifest, "recipe": recipe.to_dict(), "steps_meta": metas}
        size_after = save_artifact(art_path, model, manifest)
        if verify_reload:
            extra["reload_check"] = _verify_reload(art_path, model, data, allowlist=allowlist, engine=engine,
                                                   batch_size=eval_bs)

    if onnx_export is not None:
        extra["onnx"] = _export_onnx(float_model if onnx_export == "float" else model, spec,
                                     store / "onnx" / f"{key}-{onnx_export}.onnx")

    float_layers = sorted({n for m in metas for n in m.get("float_modules", [])})
    last_float = chain.last_float()
    result = OptimizeResult(
        status=status, reason=reason, model_name=spec.name, model_sha256=content, recipe=recipe.to_dict(),
        recipe_sha256=recipe.sha256, engine=engine, torch_version=tv, arch=platform.machine(),
        artifact_key=key, artifact_path=str(art_path), float_artifact_path=str(float_path),
        size_before_bytes=size_before, size_after_bytes=size_after, metric_name=spec.metric,
        metric_before=metric_before, metric_after=metric_after,
        latency_before=[s.to_dict() for s in lat_before], latency_after=[s.to_dict() for s in lat_after],
        params_before=params_before, params_after=count_params(model), flops_before=flops_before,
        flops_after=count_flops(last_float, probe), sparsity_after=global_sparsity(last_float),
        float_layers=float_layers, steps_meta=metas, eval_description=data.description, extra=extra,
    )
    # Written last: its presence means the artifact above is complete.
    atomic_write_json(result_path, {**result.to_dict(), "reused": False})
    return result


def _verify_reload(path: Path, model: nn.Module, data: TaskData, *, allowlist: tuple[str, ...], engine: str,
                   batch_size: int) -> dict[str, Any]:
    """Reload the artifact as a user would and require the measured model's exact outputs."""
    loaded = load_artifact(path, allowlist=allowlist, engine=engine).model
    n = min(n_samples(data.eval_inputs), batch_size)
    probe = batch_of(data.eval_inputs, 0, n)
    probe_in = probe[0] if len(probe) == 1 else probe
    a = predict(model, probe_in, batch_size=batch_size)
    b = predict(loaded, probe_in, batch_size=batch_size)
    diff = float((a - b).abs().max()) if a.shape == b.shape else math.inf
    if not torch.equal(a, b):
        raise RuntimeError(f"artifact {path.name} does not reproduce the measured model after reload "
                           f"(max abs difference {diff}); this is a bug in the step's rebuild")
    return {"samples": n, "max_abs_diff": diff, "equal": True}


def _export_onnx(model: nn.Module, spec: ModelSpec, path: Path) -> dict[str, Any]:
    from modelpress.optimize.onnx_export import export_and_check

    report = export_and_check(model, spec.make_input(2), path, input_names=spec.extra.get("input_names"))
    return report.to_dict()


__all__ = ["OptimizeResult", "optimize_model", "LatencyStats"]

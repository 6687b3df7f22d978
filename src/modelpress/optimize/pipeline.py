"""Run one recipe on one model for one engine, measuring everything before and after.

This is the whole job as a library call (no Celery, no database):

    >>> from modelpress.optimize.pipeline import optimize_model  # doctest: +SKIP
    >>> r = optimize_model(model_name="mlp", recipe=resolve_recipe("dynamic-int8"),
    ...                    engine="fbgemm", store="/tmp/store")  # doctest: +SKIP
    >>> r.size_before_bytes / r.size_after_bytes  # doctest: +SKIP
    3.85

The artifact key hashes (model content, recipe, engine, torch version): a second call with the same
inputs, e.g. a redelivered task, finds the stored result through ``index/<key>.json`` and returns it
(``reused``) when the objects it names are intact. Every output is an immutable object named by its
sha256 (``float/``, ``artifacts/``, ``rejected/``, ``results/``): a later run of the same key writes new
objects and re-points the index, so an older row's path still holds the bytes that row describes.

Accuracy budget with fallback: whether the budget holds is first judged on validation rows
(``TaskData.val_inputs``; else calibration rows, by fidelity). When it is broken there and a
quantization step is in the chain, the per-layer sensitivity of that step is *measured* on calibration
inputs (``optimize.sensitivity``), then its most sensitive layers are kept float one more at a time (up
to ``Budget.max_float_layers``) until the budget holds *on those rows*. The reported metric is then
computed once on the eval rows for the chosen trial (``extra["fallback"]["chosen_on"]`` says which rows
chose), and the final verdict is the budget on that reported metric. The layers kept float are recorded
in the step meta (``float_modules``) and in ``OptimizeResult.float_layers``. If the budget does not hold
on eval, the job is ``rejected`` with the numbers and its artifact is kept under ``rejected/``.

Figures carry their conditions: the eval batch size (dynamic int8 scales activations per batch) and the
metric at batch 1 on the first rows (``metric_after_b1``). The reported latency is timed once every
choice is made: the float model and the artifact as reloaded, side by side in alternating rounds
(``before_after_latency``), under a host-wide lock (``measure.host_timing_lock``) with the wait and the
host's load average in ``extra["timing"]``.

Every artifact is reloaded with ``artifacts.load_artifact`` before the result is written, and its outputs
must equal those of the model that was measured (``extra["reload_check"]``).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn

from modelpress.optimize.artifacts import (
    artifact_key,
    atomic_write_json,
    load_artifact,
    put_json_object,
    save_artifact_object,
)
from modelpress.optimize.backends import is_quantized_module, quantized_engine
from modelpress.optimize.errors import ModelLoadError, UserInputError
from modelpress.optimize.measure import (
    LatencyStats,
    batch_of,
    compute_metric,
    count_flops,
    count_params,
    before_after_latency,
    n_samples,
    predict,
)
from modelpress.optimize.recipes import Budget, Recipe, StepConfig
from modelpress.optimize.steps import StepContext, StepOutput, apply_step, global_sparsity, handler_for
from modelpress.optimize.zoo import ModelSpec, TaskData

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
    # Content addresses of the two artifacts (their file names are these hashes).
    artifact_sha256: str = ""
    float_artifact_sha256: str = ""
    # Dynamic int8 scales activations per batch: the metric depends on the batch it is evaluated in.
    metric_eval_batch_size: int | None = None
    metric_before_b1: float | None = None  # on the same first ``metric_b1_rows`` eval rows
    metric_after_b1: float | None = None
    metric_b1_rows: int | None = None
    # Where the artifact runs (issue 11): the runtime that built it (auto: the winner) and its package versions.
    runtime: str = "torch"
    runtime_versions: dict[str, str] = field(default_factory=dict)
    # The code that built and measured it (``buildinfo.build_fingerprint``): producers reuse a result only
    # from the code they run themselves.
    builder_sha256: str = field(default_factory=lambda: _builder())

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


def _builder() -> str:
    from modelpress.optimize.buildinfo import build_fingerprint

    return build_fingerprint()


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
    # The ranking of layers is a choice: made on validation rows when the data has them (issue 20, item 11),
    # else on calibration inputs; never on the eval rows whose metric is reported.
    rows = data.val_inputs if data.val_inputs is not None and n_samples(data.val_inputs) > 0 else data.calib_inputs
    n = min(budget.sensitivity_samples, n_samples(rows))
    if n == 0:
        raise UserInputError("the accuracy-budget fallback measures layer sensitivity on validation or calibration "
                             "inputs, and this model's spec has none; set budget.max_float_layers: 0")
    b = batch_of(rows, 0, n)
    return b[0] if len(b) == 1 else b


@dataclass
class _ChoiceRows:
    """The rows choices are made on (validation, else calibration), never the reported eval rows.

    ``metric`` is the task's accuracy when these rows have labels, else fidelity to the float model on
    them: top-1 agreement for logits, cosine for embeddings. ``before`` is the float model's value.
    """

    rows: str  # "validation" | "calibration"
    inputs: Any
    labels: torch.Tensor | None
    metric: str
    reference: torch.Tensor
    before: float
    batch_size: int

    @classmethod
    def of(cls, spec: ModelSpec, data: TaskData, float_model: nn.Module, *,
           batch_size: int) -> "_ChoiceRows | None":
        """The choice rows of ``data``, or None when it has neither validation nor calibration rows."""
        if data.val_inputs is not None and n_samples(data.val_inputs) > 0:
            rows, inputs, labels = "validation", data.val_inputs, data.val_labels
        else:
            rows, inputs, labels = "calibration", data.calib_inputs, None
        if n_samples(inputs) == 0:
            return None  # nothing to choose on: the budget is only a verdict on eval, with no fallback
        if spec.metric == "accuracy" and labels is not None:
            metric = "accuracy"
        else:
            metric, labels = ("cosine" if spec.metric == "cosine" else "top1_agreement"), None
        reference = predict(float_model, inputs, batch_size=batch_size)
        before = compute_metric(metric, reference, labels=labels, reference=reference)  # type: ignore[arg-type]
        return cls(rows, inputs, labels, metric, reference, before, batch_size)

    def measure(self, model: nn.Module) -> float:
        out = predict(model, self.inputs, batch_size=self.batch_size)
        return compute_metric(self.metric, out, labels=self.labels, reference=self.reference)  # type: ignore[arg-type]

    def describe(self) -> dict[str, Any]:
        return {"rows": self.rows, "samples": n_samples(self.inputs), "metric": self.metric, "before": self.before}


def _fallback(chain: _Chain, recipe: Recipe, ctx: StepContext, *, data: TaskData, choice: _ChoiceRows,
              choice_after: float, eval_bs: int, log: Callable[[str], None]) -> tuple[_Chain, dict[str, Any]] | None:
    """Keep the most sensitive layers of the last quantization step float until the budget holds.

    Every decision (the ranking, and how many layers stay float) is made on calibration or validation
    rows (``choice``), never on the eval rows whose metric is reported: the caller computes that once,
    for the chosen trial. Returns the chosen chain and a JSON-able record, or None when no fallback
    applies.
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
    inputs = _sensitivity_inputs(data, budget)
    reference = predict(model_in, inputs, batch_size=eval_bs)
    log(f"budget broken on the {choice.rows} rows ({choice.metric} {choice_after:.4f}); measuring per-layer "
        f"sensitivity of step {i + 1} ({len(out.meta['quantized_modules'])} layers, {budget.sensitivity_method})")
    report = handler.sensitivity(model_in, out, cfg, ctx, inputs=inputs, reference=reference,  # type: ignore[attr-defined]
                                 method=budget.sensitivity_method, batch_size=eval_bs)
    ranking = report.ranking()
    # Keeping every layer float is not quantization: leave at least one layer int8.
    limit = min(budget.max_float_layers, len(ranking) - 1)
    trials: list[dict[str, Any]] = [{"float_layers": [], "metric": choice_after, "within_budget": False}]
    best: tuple[float, _Chain] = (choice_after, chain)
    chosen = None
    base_keep = tuple(getattr(cfg, "keep_float", ()))
    for k in range(1, limit + 1):
        keep = base_keep + tuple(ranking[:k])
        trial_cfg = cfg.model_copy(update={"keep_float": keep})
        steps = recipe.steps[:i] + (trial_cfg,) + recipe.steps[i + 1 :]
        trial = _run_steps(chain, steps, i, ctx, log=lambda m: None)
        metric_k = choice.measure(trial.model)
        ok = budget.allows(before=choice.before, after=metric_k)
        trials.append({"float_layers": list(ranking[:k]), "metric": metric_k, "within_budget": ok})
        log(f"fallback: {k} layer(s) float → {choice.metric} {metric_k:.4f} on {choice.rows} rows"
            f"{' (within budget)' if ok else ''}")
        if metric_k > best[0]:
            best = (metric_k, trial)
        if ok:
            chosen = k
            best = (metric_k, trial)
            break
    record = {"step": i, "sensitivity": report.to_dict(), "trials": trials, "chosen_float_layers": chosen,
              "max_float_layers": budget.max_float_layers, "chosen_on": choice.describe()}
    return best[1], record


# Batch-1 evaluation is one forward per row: bounded in rows and in time, and the row count recorded.
B1_MAX_ROWS = 512
B1_MAX_SECONDS = 30.0


@torch.inference_mode()
def _metric_at_batch1(model: nn.Module, data: TaskData, metric: str, ref_out: torch.Tensor, *,
                      max_rows: int = B1_MAX_ROWS, max_seconds: float = B1_MAX_SECONDS) -> dict[str, Any]:
    """The metric with the model called one row at a time (as a service calls it), on the first rows.

    ``before`` is the float model's metric on the same rows, so the two compare like with like.
    """
    n = min(max_rows, n_samples(data.eval_inputs))
    outs = []
    t0 = time.monotonic()
    for r in range(n):
        o = model(*batch_of(data.eval_inputs, r, r + 1))
        outs.append((o.dequantize() if o.is_quantized else o).float())
        if time.monotonic() - t0 > max_seconds:
            break
    k = len(outs)
    out = torch.cat(outs)
    labels = data.eval_labels[:k] if data.eval_labels is not None else None
    ref = ref_out[:k]
    return {"after": compute_metric(metric, out, labels=labels, reference=ref),  # type: ignore[arg-type]
            "before": compute_metric(metric, ref, labels=labels, reference=ref), "rows": k}  # type: ignore[arg-type]


def float_reference(float_model: nn.Module, spec: ModelSpec, data: TaskData, eval_bs: int) -> tuple[torch.Tensor, float]:
    """The float model's outputs on the eval rows and its metric: what every result is compared with.

    Shared by the torch path and the runtime path (``runtime_pipeline``), so "before" means one thing.
    """
    if float_model.training:
        raise RuntimeError("the float model must be in eval mode before it is measured")
    ref_out = predict(float_model, data.eval_inputs, batch_size=eval_bs)
    try:
        metric_before = compute_metric(spec.metric, ref_out, labels=data.eval_labels, reference=ref_out)
    except RuntimeError as e:
        raise ModelLoadError(f"the model's outputs do not fit its labels: {e}") from None
    return ref_out, metric_before


def _timing_record(timings: list[dict[str, Any]]) -> dict[str, Any]:
    loads = [v for t in timings for v in (t["load_avg_1m_start"], t["load_avg_1m_end"]) if v is not None]
    return {"phases": timings, "lock_wait_s": sum(t["waited_s"] for t in timings),
            "load_avg_1m": max(loads) if loads else None}


def _cached_result(store: Path, key: str, log: Callable[[str], None]) -> "OptimizeResult | None":
    """The stored result for ``key`` if it and both artifacts it names are intact, else None."""
    from modelpress.store import file_sha256

    index = store / "index" / f"{key}.json"
    if not index.is_file():
        return None
    try:
        ref = json.loads(index.read_text())
        result_path = store / "results" / f"{ref['result_sha256']}.json"
        if file_sha256(result_path) != ref["result_sha256"]:
            raise ValueError("the stored result does not match its hash")
        stored = OptimizeResult.from_dict(json.loads(result_path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        log(f"stored result {key[:12]} is unreadable ({e}); measuring anew")
        return None
    for path, sha in ((stored.artifact_path, stored.artifact_sha256),
                      (stored.float_artifact_path, stored.float_artifact_sha256)):
        if not sha or not Path(path).is_file() or file_sha256(path) != sha:
            # Corrupt or missing: measure again; the new object replaces the corrupt one.
            log(f"stored artifact {path} is missing or corrupt; measuring anew")
            return None
    return stored


def optimize_model(*, model_name: str | None = None, recipe: Recipe, engine: str, store: str | Path,
                   model_ref: Any = None, stored_ref: Any = None,
                   weights: str | None = None, allowlist: tuple[str, ...] = (),
                   max_weights_bytes: int = 2 * 1024**3, threads: int = 1, warmup: int = 10,
                   runs: int = 50, log: Callable[[str], None] = lambda m: None,
                   onnx_export: Literal["float", "result"] | None = None,
                   verify_reload: bool = True, reuse: bool = True,
                   timing_lock_dir: str | os.PathLike[str] | None = None) -> OptimizeResult:
    """Optimize ``model_name`` with ``recipe`` for ``engine``; artifacts go under ``store``.

    ``onnx_export`` also exports the float model (or a float result, e.g. pruned) to ONNX and checks it in
    onnxruntime (``extra["onnx"]``). ``verify_reload`` reloads the saved artifact and requires identical
    outputs (``extra["reload_check"]``). Latency is timed under the host-wide lock in ``timing_lock_dir``
    (default ``measure.default_timing_lock_dir()``); ``extra["timing"]`` records waits and load.

    The model is a registered ``model_name`` (as before) or a ``model_ref`` (``optimize.sources.ModelRef``,
    its paths local files: an HF folder, torchvision/timm weights, a .pt2, with its data). ``stored_ref``
    (the same ref with store refs, as in the job row) is recorded in the artifact so that
    ``modelpress.load`` can fetch the files on another machine.
    """
    store = Path(store)
    if onnx_export not in (None, "float", "result"):
        raise OnnxExportRequestError(f"onnx_export must be 'float', 'result' or None, not {onnx_export!r}")
    if onnx_export == "result" and any(hasattr(handler_for(c), "sensitivity") for c in recipe.steps):
        raise OnnxExportRequestError(
            "onnx_export='result' cannot export a torch.ao int8 model (torch.onnx has no exporter for its "
            "packed kernels); use onnx_export='float' and quantize the ONNX file with onnxruntime")
    # Resolve the source (registered name or a user's model ref); from here on every source takes one flow.
    from modelpress.optimize.sources import resolve as sources_resolve

    resolved = sources_resolve.resolve(model_name=model_name, model_ref=model_ref, weights=weights,
                                       allowlist=allowlist, max_bytes=max_weights_bytes, cache_dir=store / "builtin")
    if resolved.ref is not None:
        sources_resolve.refuse_unsupported_steps(resolved.ref, [c.type for c in recipe.steps])
    spec = resolved.spec
    model_name = model_name or (resolved.ref.name if resolved.ref is not None else spec.name)
    torch.set_num_threads(threads)
    float_model, content = resolved.model, resolved.content
    # "name" is the reference the model was resolved by (entry point or allow-listed module:attr), so that
    # load_artifact can resolve it again; "spec_name" is the spec's own name.
    model_manifest: dict[str, Any] = {"name": model_name, "spec_name": spec.name, "version": spec.version,
                                      "content_sha256": content}
    if resolved.ref is not None:
        # What load_artifact rebuilds the architecture from (local paths, and store refs when known).
        model_manifest["ref"] = resolved.ref.to_dict()
        if stored_ref is not None:
            model_manifest["stored_ref"] = stored_ref if isinstance(stored_ref, dict) else stored_ref.to_dict()
    if recipe.runtime != "torch":  # ONNX Runtime, OpenVINO or auto: its own module (issue 11)
        from modelpress.optimize.runtime_pipeline import optimize_in_runtime

        return optimize_in_runtime(model_name=model_name, spec=spec, recipe=recipe, engine=engine, store=store,
                                   float_model=float_model, content=content, allowlist=allowlist, threads=threads,
                                   warmup=warmup, runs=runs, log=log, verify_reload=verify_reload, reuse=reuse,
                                   timing_lock_dir=timing_lock_dir, model_manifest=model_manifest)
    tv = torch.__version__
    key = artifact_key(content, recipe.sha256, engine, tv)
    # ``reuse=False`` re-measures (a nightly run watching for drift, --force): it writes new objects and
    # points the key's index at them; the objects older rows name are never rewritten.
    if reuse and (stored := _cached_result(store, key, log)) is not None:
        log(f"reusing stored result {key[:12]}")
        stored.reused = True
        return stored

    data = spec.data()
    eval_bs = _eval_batch_size(spec)
    base_manifest = {"model": model_manifest, "engine": engine, "torch_version": tv}
    float_path, float_sha, size_before = save_artifact_object(
        store / "float", float_model, {**base_manifest, "recipe": {"steps": []}, "steps_meta": []})

    log("measuring the float model")
    ref_out, metric_before = float_reference(float_model, spec, data, eval_bs)
    timings: list[dict[str, Any]] = []
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
        if budget is not None:
            # Whether to fall back, and how far, is decided on validation (or calibration) rows; the
            # eval rows only ever give the reported number, and the verdict on it.
            first_metric = metric_after
            choice = _ChoiceRows.of(spec, data, float_model, batch_size=eval_bs)
            fb = None
            if choice is not None:
                choice_after = choice.measure(chain.model)
                extra["budget_check"] = {**choice.describe(), "after": choice_after,
                                         "within_budget": budget.allows(before=choice.before, after=choice_after)}
            if choice is not None and not extra["budget_check"]["within_budget"]:
                fb = _fallback(chain, recipe, ctx, data=data, choice=choice, choice_after=choice_after,
                               eval_bs=eval_bs, log=log)
            if fb is not None:
                chain, extra["fallback"] = fb
                out_after = predict(chain.model, data.eval_inputs, batch_size=eval_bs)
                metric_after = compute_metric(spec.metric, out_after, labels=data.eval_labels, reference=ref_out)
                extra["fallback"]["eval_metric"] = metric_after
            if not budget.allows(before=metric_before, after=metric_after):
                status = "rejected"
                reason = (f"{spec.metric} fell from {metric_before:.4f} to {metric_after:.4f}, more than the budget "
                          f"allows ({budget.allowed_drop(metric_before):.4f})")
                if fb is not None:
                    trials = fb[1]["trials"]
                    reason += (f"; keeping up to {len(trials) - 1} of the most sensitive layer(s) float "
                               f"(chosen on {fb[1]['chosen_on']['rows']} rows) did not fit either (without fallback: "
                               f"{first_metric:.4f}; max_float_layers={budget.max_float_layers})")
        model, metas = chain.model, chain.metas
        if model.training:
            raise RuntimeError("the optimized model must be in eval mode before it is measured")
        b1 = _metric_at_batch1(model, data, spec.metric, ref_out)
        for name, fn in spec.extra.get("extra_metrics", {}).items():
            extra.setdefault("metrics_after", {})[name] = float(fn(out_after, ref_out))

        # A rejected result is kept (users want to see it) but never under the promoted name. Objects
        # are named by their sha256 and never rewritten: older rows keep describing their bytes.
        manifest = {**base_manifest, "recipe": recipe.to_dict(), "steps_meta": metas}
        art_path, art_sha, size_after = save_artifact_object(
            store / ("rejected" if status == "rejected" else "artifacts"), model, manifest)
        served: nn.Module = model
        if verify_reload:
            extra["reload_check"], served = _verify_reload(art_path, model, data, allowlist=allowlist, engine=engine,
                                                           batch_size=eval_bs)
        # Reported latency: the artifact as reloaded (the deployed thing) beside the float model, timed fresh.
        lat_before, lat_after = before_after_latency(float_model, served, spec, lock_dir=timing_lock_dir,
                                                     warmup=warmup, runs=runs, threads=threads, timings=timings)
        extra["timing"] = _timing_record(timings)

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
        latency_before=lat_before, latency_after=lat_after,
        params_before=params_before, params_after=count_params(model), flops_before=flops_before,
        flops_after=count_flops(last_float, probe), sparsity_after=global_sparsity(last_float),
        float_layers=float_layers, steps_meta=metas, eval_description=data.description, extra=extra,
        artifact_sha256=art_sha, float_artifact_sha256=float_sha, metric_eval_batch_size=eval_bs,
        metric_before_b1=b1["before"], metric_after_b1=b1["after"], metric_b1_rows=b1["rows"],
    )
    # Written last: the result object, then the key's index (replaced atomically) naming it.
    _, result_sha = put_json_object(store / "results", {**result.to_dict(), "reused": False})
    atomic_write_json(store / "index" / f"{key}.json", {"key": key, "result_sha256": result_sha})
    return result


def _verify_reload(path: Path, model: nn.Module, data: TaskData, *, allowlist: tuple[str, ...], engine: str,
                   batch_size: int) -> tuple[dict[str, Any], nn.Module]:
    """Reload the artifact as a user would and require the measured model's exact outputs; the record and
    the reloaded model (what the reported latency times)."""
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
    return {"samples": n, "max_abs_diff": diff, "equal": True}, loaded


def _export_onnx(model: nn.Module, spec: ModelSpec, path: Path) -> dict[str, Any]:
    from modelpress.optimize.onnx_export import export_and_check

    report = export_and_check(model, spec.make_input(2), path, input_names=spec.extra.get("input_names"))
    return report.to_dict()


__all__ = ["OptimizeResult", "optimize_model", "LatencyStats"]

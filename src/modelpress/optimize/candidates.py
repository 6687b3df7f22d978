"""Stage 2 of a job: build the candidates, one per (runtime, variant), from the recipe's steps.

The recipe's torch-only steps before its quantization step (pruning, fine-tuning, distillation) run once,
on torch (``chain``). Each candidate runtime then, through the one runtime interface
(``runtimes.base.Runtime``):

1. exports that last float model, and records its *float* numbers in that runtime
   (``measurements["candidates"][i]["runtime_float"]``);
2. quantizes with its own toolchain per the recipe's quantization step, once per variant it offers
   (``Runtime.variants``, e.g. per-tensor and per-channel weights);
3. tuning: tries the quantizer settings that keep the int8 graph (``Runtime.tunings``, e.g. SmoothQuant's
   strength in NNCF) and keeps the most faithful on the selection rows, the defaults winning ties;
4. budget + fallback: when the budget is broken on the selection rows, keeps the most sensitive layers
   float (leave-one-float in the runtime's own quantizer), bounded in time by ``FALLBACK_MAX_SECONDS``;
5. saves, reloads, scores on the selection rows, times, and checks that a row's answer does not depend
   on its batch.

A candidate that cannot be built is recorded with its reason and skipped; the job fails only when none can
be built. A recipe naming ``runtime: torch`` is built whole by ``runtimes.torch_recipe`` instead (torch can
run every step in any order); its candidate then goes through the same choice, measurement and publishing.

Example:
    >>> from modelpress.optimize.recipes import Recipe
    >>> r = Recipe.from_dict({"name": "x", "steps": [{"type": "quantize_dynamic"}], "runtime": "onnxruntime"})
    >>> candidate_names(r)
    ['onnxruntime']
"""

from __future__ import annotations

import inspect
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from modelpress.errors import UserInputError
from modelpress.optimize.chain import StepChain, run_steps
from modelpress.optimize.choose import Selection, unbatch, variant_label
from modelpress.optimize.measure import as_tuple, batch_of, compute_metric, n_samples, predict
from modelpress.optimize.plan import JobPlan
from modelpress.optimize.recipes import QATConfig, Recipe, StaticQuantConfig, StepConfig
from modelpress.optimize.runtimes.base import Exported, Runtime, RuntimeUnavailableError
from modelpress.optimize.runtimes.registry import AUTO, get_runtime, runtime_names
from modelpress.optimize.runtimes.torch_handle import TorchHandle
from modelpress.optimize.search import search_levels
from modelpress.optimize.spec import ModelSpec, TaskData
from modelpress.optimize.techniques.registry import StepContext, handler_for


#: Longest a runtime candidate's layer-sensitivity fallback may be estimated to take (seconds; env override).
FALLBACK_MAX_SECONDS = int(os.environ.get("MODELPRESS_RUNTIME_FALLBACK_MAX_S", "900"))

#: Rows of the selection data run one at a time and as one batch to check that a candidate's answer for a
#: row does not depend on the other rows in its batch.
BATCH_CHECK_ROWS = 16
#: Smallest per-row cosine (batch of ``BATCH_CHECK_ROWS`` vs one row at a time) a static-int8 candidate may
#: show. Fixed activation scales make every row's result independent of its neighbours up to kernel rounding
#: (measured: identical outputs for MiniLM in OpenVINO and for the first-token toy encoder); OpenVINO 2026.4's
#: CPU plugin gave 0.956 at 16 rows and -0.23 at 56 on a mean-pooled head after SmoothQuant
#: (tests/optimize/runtimes/test_batch_consistency.py).
BATCH_CONSISTENCY_MIN = 0.99

#: Candidates keeping the budget whose objective latency is within this fraction of the best one are timed
#: again side by side (``runoff``) before one is chosen; env override.
RUNOFF_MARGIN = float(os.environ.get("MODELPRESS_RUNOFF_MARGIN", "0.10"))
#: Rounds of the run-off; each times every contender for ``ceil(runs / RUNOFF_ROUNDS)`` calls.
RUNOFF_ROUNDS = 5
#: At most this many contenders (the closest to the best) go into a run-off.
RUNOFF_MAX = 3


class BatchDependentOutputsError(UserInputError):
    """A static-int8 candidate answers a row differently depending on the other rows in its batch."""


def batch_consistency(fn: Callable[..., torch.Tensor], inputs: Any, rows: int = BATCH_CHECK_ROWS) -> dict[str, Any]:
    """How far ``fn``'s outputs for the first ``rows`` rows move between one batch and one row at a time.

    A served model is called with whatever else is in the batch; an answer that changes with its neighbours
    makes every metric depend on the batch it was measured at. Dynamic int8 moves a little by design (the
    activation scale is taken over the batch); static int8 must not move.

    Example:
        >>> import torch
        >>> r = batch_consistency(torch.nn.Linear(4, 3), torch.randn(8, 4), rows=8)
        >>> r["rows"], r["min_row_cosine"] > 0.9999
        (8, True)
    """
    n = min(rows, n_samples(inputs))
    with torch.no_grad():
        batched = predict(fn, unbatch(batch_of(inputs, 0, n)), batch_size=n)
        single = predict(fn, unbatch(batch_of(inputs, 0, n)), batch_size=1)
    if batched.shape != single.shape or batched.shape[0] != n:
        return {"rows": n, "min_row_cosine": None, "skipped": f"outputs are not one row per input row "
                                                              f"({tuple(batched.shape)})"}
    b, s = batched.reshape(n, -1).double(), single.reshape(n, -1).double()
    cos = torch.nn.functional.cosine_similarity(b, s, dim=-1)
    same = (b - s).abs().amax(dim=-1) == 0  # all-zero rows have no cosine; identical rows agree by definition
    cos = torch.where(same, torch.ones_like(cos), cos)
    return {"rows": n, "min_row_cosine": float(cos.min()), "max_abs_diff": float((b - s).abs().max())}


def candidate_names(recipe: Recipe) -> list[str]:
    """The runtimes a recipe builds: its own, or every registered one for ``auto`` (torch first)."""
    if recipe.runtime != AUTO:
        return [recipe.runtime]
    return ["torch"] + [n for n in runtime_names() if n != "torch"]


def runtime_versions(names: Sequence[str]) -> dict[str, dict[str, str]]:
    """Versions of every usable runtime among ``names`` (an unusable one maps to {"unavailable": reason})."""
    out: dict[str, dict[str, str]] = {}
    for n in names:
        rt = get_runtime(n)
        reason = rt.is_available()
        out[n] = {"unavailable": reason} if reason else rt.versions()
    return out


def quant_index(recipe: Recipe) -> int | None:
    """Index of the recipe's last quantization step (a step whose handler measures sensitivity), or None."""
    idx = [i for i, c in enumerate(recipe.steps) if hasattr(handler_for(c), "sensitivity")]
    return idx[-1] if idx else None


def input_names(spec: ModelSpec, model: nn.Module, n: int) -> list[str]:
    """The spec's input names, else the forward's own argument names (what a serving caller will pass)."""
    names = spec.extra.get("input_names")
    if names:
        return list(names)
    params = [p.name for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return params[:n] if len(params) >= n else [f"input_{i}" for i in range(n)]


def _batches(x: Any, size: int, limit: int | None = None) -> list[tuple[torch.Tensor, ...]]:
    n = n_samples(x)
    out = [batch_of(x, i, min(i + size, n)) for i in range(0, n, size)]
    return out[:limit] if limit else out


def calibration_rows(data: TaskData, qcfg: StepConfig) -> tuple[Any, dict[str, Any]]:
    """The rows a quantization step calibrates on, and what they were: the calibration rows, topped up with a
    seeded sample of train rows to ``calibration_batches × calibration_batch_size`` when the step asks
    (``top_up_from_train``) and the calibration file has fewer.

    Train rows may calibrate: they are neither the validation rows a choice is made on nor the rows reported.
    Measured on MiniLM's 0.22 student in OpenVINO: int8 cost −0.0024 in cosine on the reported rows with the 64
    calibration rows, −0.0021 with 256 rows, −0.0018 with 512.

    Example:
        >>> from modelpress.optimize.recipes import StaticQuantConfig
        >>> from modelpress.optimize.spec import TaskData
        >>> d = TaskData(eval_inputs=torch.zeros(4, 2), eval_labels=None, calib_inputs=torch.zeros(3, 2),
        ...              train_inputs=torch.ones(100, 2))
        >>> x, what = calibration_rows(d, StaticQuantConfig(calibration_batches=2, calibration_batch_size=8,
        ...                                                  top_up_from_train=True))
        >>> n_samples(x), what
        (16, {'calibration_rows': 3, 'train_rows': 13})
    """
    calib = data.calib_inputs
    n = n_samples(calib)
    want = int(getattr(qcfg, "calibration_batches", 0) or 0) * int(getattr(qcfg, "calibration_batch_size", 32))
    train = data.train_inputs
    if not getattr(qcfg, "top_up_from_train", False) or train is None or n >= want:
        return calib, {"calibration_rows": min(n, want) if want else n, "train_rows": 0}
    c, t = as_tuple(calib), as_tuple(train)
    if len(c) != len(t) or any(a.shape[1:] != b.shape[1:] or a.dtype != b.dtype for a, b in zip(c, t)):
        return calib, {"calibration_rows": n, "train_rows": 0,
                       "top_up_skipped": "train rows are not shaped like the calibration rows"}
    k = min(want - n, n_samples(train))
    # A seeded sample, not the first rows: a train folder is read class by class, and one class's
    # activations would set every scale.
    pick = torch.randperm(n_samples(train), generator=torch.Generator().manual_seed(0))[:k]
    rows = tuple(torch.cat([a, b[pick]]) for a, b in zip(c, t))
    return (rows if isinstance(calib, tuple) else rows[0]), {"calibration_rows": n, "train_rows": k}


def _save_load(job: JobPlan, rt: Runtime, exp: Exported, path: Path) -> tuple[int, Callable[..., torch.Tensor]]:
    size = rt.save(exp, path)
    return size, job.load(rt, path)


def _float_batch_consistent(prefix: dict[str, Any], model: nn.Module, inputs: Any) -> bool:
    """Whether the float model itself answers each row alone (a model may mix rows on purpose); once per job."""
    if "float_consistent" not in prefix:
        got = batch_consistency(model, inputs)["min_row_cosine"]
        prefix["float_consistent"] = got is not None and got >= 0.9999
    return bool(prefix["float_consistent"])


def _fallback(job: JobPlan, rt: Runtime, float_exp: Exported, qcfg: Any, calib: list[tuple[torch.Tensor, ...]],
              sel: Selection, first: float, workdir: Path,
              tuning: dict[str, Any] | None = None) -> tuple[Exported, float, dict[str, Any]]:
    """Keep the most sensitive layers float, one more at a time, until the budget holds on the selection rows.

    Sensitivity of a layer = selection-row error recovered by keeping it alone float (leave-one-float),
    measured in this runtime's own quantizer.
    """
    budget = job.recipe.budget
    assert budget is not None
    base_keep = tuple(getattr(qcfg, "keep_float", ()))
    layers = [n for n in rt.layers(float_exp) if n not in base_keep]
    t0 = time.perf_counter()
    scores: dict[str, float] = {}
    for name in layers:
        q = rt.quantize(float_exp, qcfg, calib, keep_float=base_keep + (name,), workdir=workdir, tuning=tuning)
        _, fn = _save_load(job, rt, q, workdir / f"sens{rt.suffix}")
        scores[name] = sel.score(fn)
    ranking = sorted(layers, key=lambda n: -scores[n])
    limit = min(budget.max_float_layers, len(ranking) - 1)
    trials: list[dict[str, Any]] = [{"float_layers": [], "selection_metric": first, "within_budget": False}]
    best: tuple[float, Exported | None, int] = (first, None, 0)
    for k in range(1, limit + 1):
        keep = base_keep + tuple(ranking[:k])
        q = rt.quantize(float_exp, qcfg, calib, keep_float=keep, workdir=workdir, tuning=tuning)
        _, fn = _save_load(job, rt, q, workdir / f"trial{rt.suffix}")
        m = sel.score(fn)
        ok = sel.allows(budget, m)
        trials.append({"float_layers": list(ranking[:k]), "selection_metric": m, "within_budget": ok})
        job.log(f"{rt.name} fallback: {k} layer(s) float → {sel.metric} {m:.4f} on {sel.rows} rows")
        if m > best[0] or ok:
            best = (m, q, k)
        if ok:
            break
    record = {"sensitivity": {"method": "leave_one_float", "rows": sel.rows, "scores": scores,
                              "ranking": ranking, "seconds": time.perf_counter() - t0},
              "trials": trials, "chosen_float_layers": best[2] if trials[-1]["within_budget"] else None,
              "max_float_layers": budget.max_float_layers}
    if best[1] is None:
        return rt.quantize(float_exp, qcfg, calib, keep_float=base_keep, workdir=workdir, tuning=tuning), first, record
    return best[1], best[0], record


def _tune(job: JobPlan, rt: Runtime, float_exp: Exported, qcfg: Any, calib: list[tuple[torch.Tensor, ...]],
          keep: tuple[str, ...], sel: Selection, default_exp: Exported, default_metric: float,
          options: Sequence[dict[str, Any]], one_trial_s: float,
          workdir: Path) -> tuple[dict[str, Any] | None, Exported, float, dict[str, Any]]:
    """Try the runtime's quantizer settings (``Runtime.tunings``) beside its defaults; keep the most faithful.

    Every option keeps the quantized graph (same layers int8, same kernels), so it is chosen on fidelity
    alone, and only on selection rows: the eval rows the job reports stay unseen. The defaults win ties.
    Bounded like the fallback: skipped when the options would take longer than ``FALLBACK_MAX_SECONDS``.
    """
    estimate = one_trial_s * len(options)
    tried: list[dict[str, Any]] = [{"tuning": None, "selection_metric": default_metric}]
    record: dict[str, Any] = {"rows": sel.rows, "metric": sel.metric, "tried": tried, "chosen": None}
    if estimate > FALLBACK_MAX_SECONDS:
        record["skipped"] = f"estimated {estimate:.0f} s > {FALLBACK_MAX_SECONDS} s"
        return None, default_exp, default_metric, record
    best: tuple[float, dict[str, Any] | None, Exported] = (default_metric, None, default_exp)
    for opt in options:
        q = rt.quantize(float_exp, qcfg, calib, keep_float=keep, workdir=workdir, tuning=opt)
        _, fn = _save_load(job, rt, q, workdir / f"tune{rt.suffix}")
        m = sel.score(fn)
        del fn
        tried.append({"tuning": dict(opt), "selection_metric": m})
        job.log(f"{rt.name} tuning {opt}: {sel.metric} {m:.4f} on {sel.rows} rows")
        if m > best[0]:
            best = (m, dict(opt), q)
    record["chosen"] = best[1]
    return best[1], best[2], best[0], record


def candidate_variants(recipe: Recipe, name: str) -> list[dict[str, Any] | None]:
    """The settings each of a runtime's candidates applies to the recipe's quantization step (``[None]``: one).

    A runtime whose package is missing gets one candidate, which then records why it could not be built.

    Example:
        >>> r = Recipe.from_dict({"name": "x", "steps": [{"type": "quantize_dynamic"}], "runtime": "torch"})
        >>> candidate_variants(r, "torch")
        [None]
    """
    qi = quant_index(recipe)
    if qi is None:
        return [None]
    rt = get_runtime(name)
    if rt.is_available() is not None:
        return [None]
    offered = getattr(rt, "variants", None)
    return list(offered(recipe.steps[qi]) if offered else []) or [None]


def _build_candidate(job: JobPlan, name: str, float_model: nn.Module, ctx: StepContext, prefix: dict[str, Any],
                     sel: Selection, ref_out: torch.Tensor, workdir: Path, variant: dict[str, Any] | None = None,
                     shared: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export, measure float, quantize (+ fallback), save, reload, measure. Raises when it cannot be built.

    ``variant`` updates the recipe's quantization step (``Runtime.variants``); ``shared`` carries one runtime's
    export and float numbers from its first variant to the next, so a model is exported once per runtime.
    """
    rt = get_runtime(name)
    reason = rt.is_available()
    if reason is not None:
        raise RuntimeUnavailableError(f"runtime {name!r} is not usable on this worker: {reason}")
    spec, data, recipe = job.spec, job.rows(), job.recipe
    t0 = time.perf_counter()
    shared = {} if shared is None else shared
    rec: dict[str, Any] = {"runtime": name, "versions": rt.versions()}
    if variant:
        rec["variant"] = dict(variant)
    if name in shared:
        exp, runtime_float = shared[name]
    else:
        example = as_tuple(spec.make_input(2))
        exp = rt.export(float_model, example, input_names(spec, float_model, len(example)), workdir)
        if isinstance(exp.handle, TorchHandle):
            exp.handle.context = ctx
            exp.handle.steps, exp.handle.steps_meta = list(prefix["steps"]), list(prefix["steps_meta"])
            exp.handle.manifest = prefix["manifest"]
        runtime_float = None
        if name != "torch":
            size_f, fn_f = _save_load(job, rt, exp, workdir / f"float{rt.suffix}")
            out_f = predict(fn_f, data.eval_inputs, batch_size=job.eval_bs)
            runtime_float = {
                "bytes": size_f, "latency": job.latencies(fn_f, phase=f"{name}-float"),
                "metric": compute_metric(spec.metric, out_f, labels=data.eval_labels, reference=ref_out)}
            runtime_float.update(execution_record(fn_f))
            del fn_f
        shared[name] = (exp, runtime_float)
    if runtime_float is not None:
        rec["runtime_float"] = runtime_float
    qi = prefix["quant_index"]
    q_exp, float_layers = exp, []
    if qi is not None:
        qcfg = recipe.steps[qi] if not variant else recipe.steps[qi].model_copy(update=variant)
        bs = int(getattr(qcfg, "calibration_batch_size", 32))
        calib_x, rec["calibration"] = calibration_rows(data, qcfg)
        calib = _batches(calib_x, bs, getattr(qcfg, "calibration_batches", None))
        keep = tuple(getattr(qcfg, "keep_float", ()))
        t_q = time.perf_counter()
        q_exp = rt.quantize(exp, qcfg, calib, keep_float=keep, workdir=workdir)
        _, fn = _save_load(job, rt, q_exp, workdir / f"q{rt.suffix}")
        m_sel = sel.score(fn)
        one_trial_s = time.perf_counter() - t_q
        del fn
        tuning: dict[str, Any] | None = None
        options = rt.tunings(exp, qcfg)
        if options:
            tuning, q_exp, m_sel, rec["tuning"] = _tune(job, rt, exp, qcfg, calib, keep, sel, q_exp, m_sel,
                                                        options, one_trial_s, workdir)
        if recipe.budget is not None and not sel.allows(recipe.budget, m_sel) and recipe.budget.max_float_layers > 0:
            # Leave-one-float costs one quantize + score per layer; bound it so that one slow candidate (e.g.
            # static QDQ of a transformer, ~30 s per quantize on 2 cores) cannot eat the job's time limit.
            estimate = one_trial_s * (len(rt.layers(exp)) + recipe.budget.max_float_layers)
            if estimate > FALLBACK_MAX_SECONDS:
                job.log(f"{name}: budget broken ({m_sel:.4f}); fallback skipped (estimated {estimate:.0f} s)")
                rec["fallback"] = {"skipped": f"estimated {estimate:.0f} s > {FALLBACK_MAX_SECONDS} s "
                                              f"({one_trial_s:.1f} s per trial)"}
            else:
                job.log(f"{name}: budget broken on {sel.rows} rows ({m_sel:.4f}); measuring layer sensitivity")
                q_exp, m_sel, rec["fallback"] = _fallback(job, rt, exp, qcfg, calib, sel, m_sel, workdir,
                                                             tuning)
        float_layers = list(q_exp.meta.get("float_layers", keep))
        rec["quantization"] = q_exp.meta
    else:
        _, fn = _save_load(job, rt, exp, workdir / f"float-sel{rt.suffix}")
        m_sel = sel.score(fn)
        del fn
    path = workdir / f"candidate-{name}{rt.suffix}"
    size, fn = _save_load(job, rt, q_exp, path)
    out = predict(fn, data.eval_inputs, batch_size=job.eval_bs)
    rec.update({
        "status": "built", "bytes": size, "path": str(path), "suffix": rt.suffix,
        "selection_metric": m_sel, "within_budget_on_selection": sel.allows(recipe.budget, m_sel),
        "metric": compute_metric(spec.metric, out, labels=data.eval_labels, reference=ref_out),
        "latency": job.latencies(fn, phase=name), "float_layers": float_layers, "build_seconds": time.perf_counter() - t0,
    })
    rec.update(execution_record(fn))
    for mname, mfn in spec.extra.get("extra_metrics", {}).items():
        rec.setdefault("metrics", {})[mname] = float(mfn(out, ref_out))
    # Checked on selection rows, after the artifact is final: a check that fails skips the candidate (auto)
    # or fails the job; it chooses nothing among settings, so the eval rows stay unseen either way.
    rec["batch_consistency"] = batch_consistency(fn, sel.inputs)
    if qi is not None and isinstance(recipe.steps[qi], (StaticQuantConfig, QATConfig)):
        got = rec["batch_consistency"]["min_row_cosine"]
        if got is not None and got < BATCH_CONSISTENCY_MIN and _float_batch_consistent(prefix, float_model, sel.inputs):
            raise BatchDependentOutputsError(
                f"the {name} int8 artifact answers a row differently depending on the other rows in its batch "
                f"(per-row cosine {got:.4f} between a batch of {rec['batch_consistency']['rows']} and one row at "
                f"a time; the float model agrees with itself): its numbers would depend on the batch they "
                f"were measured at. Use another runtime (or runtime: auto), or keep the layer after a pooling "
                f"step float (keep_float in the quantization step)")
    rec["_exported"] = q_exp  # kept in memory for the winner's reload check; dropped from the record
    rec["_outputs"] = out
    return rec


def execution_record(fn: Callable[..., torch.Tensor]) -> dict[str, Any]:
    """``{"execution": ...}`` when the loaded callable says how its runtime runs it here (after timing), else ``{}``.

    The same file can run at another precision on another CPU (OpenVINO picks bf16 for float parts where the
    CPU has it), so the timings and the metric are only half a record without it.

    Example:
        >>> execution_record(lambda x: x)
        {}
    """
    describe = getattr(fn, "execution", None)
    return {"execution": describe()} if callable(describe) else {}


def build_in_runtimes(plan: JobPlan, extra: dict[str, Any], workdir: Path) -> list[dict[str, Any]]:
    """Every candidate of ``plan.recipe`` in its runtime(s), as records (built or skipped with a reason).

    ``extra`` receives the job-level record of the selection rows. Candidate files go under ``workdir``,
    which the caller removes after publishing the chosen one. A recipe naming one runtime raises that
    runtime's own error (its message, its retry class) when none of its variants could be built.

    With a ``search``, the torch steps run once per level of the ``prune`` step and each level's candidates
    are built and judged on the selection rows (``search.search_levels``: levels, time, frontier, polish).
    """
    recipe, spec, data, log = plan.recipe, plan.spec, plan.rows(), plan.log
    qi = quant_index(recipe)
    if qi is not None and qi != len(recipe.steps) - 1:
        raise UserInputError(f"runtime {recipe.runtime!r}: the quantization step ({recipe.steps[qi].type}) must be "
                             "the last step (torch steps run first, then the runtime quantizes)")
    # Fidelity on selection rows is judged against the user's float model, like the reported metric.
    budget = recipe.budget
    sel = Selection.of(spec, data, plan.float_model, batch_size=plan.eval_bs,
                       max_calibration_rows=budget.sensitivity_samples if budget else 256,
                       confidence=budget.confidence if budget else None)
    if sel is None:
        raise UserInputError("choosing in a runtime needs calibration or validation inputs, and this "
                             "model's spec has none")
    extra["selection"] = sel.describe()
    torch_steps = tuple(recipe.steps[:qi] if qi is not None else recipe.steps)

    def build(chain: StepChain, ctx: StepContext, steps: tuple[StepConfig, ...], wd: Path,
              level: float | None) -> tuple[list[dict[str, Any]], Exception | None]:
        prefix = {"quant_index": qi, "steps": [s.to_dict() for s in steps], "steps_meta": chain.metas,
                  "manifest": {**plan.base_manifest, "recipe": recipe.to_dict()}}
        return _level_candidates(plan, chain, ctx, prefix, sel, wd, level)

    if recipe.search is not None:
        candidates, first_error = search_levels(plan, torch_steps, sel, build, extra, workdir)
    else:
        ctx = StepContext(spec=spec, data=data, engine=plan.engine, reference=plan.float_model, log=log,
                          progress=plan.progress, checkpoint_dir=plan.checkpoint_dir)
        chain = StepChain([plan.float_model], [])
        if torch_steps:
            chain = run_steps(chain, torch_steps, 0, ctx, log)
        candidates, first_error = build(chain, ctx, torch_steps, workdir / "all", None)
    if recipe.runtime != AUTO and first_error is not None and not any(c.get("status") == "built" for c in candidates):
        raise first_error
    return candidates


def _level_candidates(plan: JobPlan, chain: StepChain, ctx: StepContext, prefix: dict[str, Any], sel: Selection,
                      workdir: Path, level: float | None) -> tuple[list[dict[str, Any]], Exception | None]:
    """Every runtime's candidates of one chain (one search level, or the recipe as written)."""
    candidates: list[dict[str, Any]] = []
    shared: dict[str, Any] = {}
    first_error: Exception | None = None
    tag = {"level": level} if level is not None else {}
    for name in candidate_names(plan.recipe):
        for i, variant in enumerate(candidate_variants(plan.recipe, name)):
            label = variant_label(name, variant) + (f" at level {level}" if level is not None else "")
            plan.log(f"building the {label} candidate")
            wd = workdir / name / f"v{i}"
            wd.mkdir(parents=True)
            try:
                rec = _build_candidate(plan, name, chain.model, ctx, prefix, sel, plan.baseline().outputs, wd,
                                       variant=variant, shared=shared)
            except Exception as e:  # noqa: BLE001 - recorded; the job goes on while another can be built
                first_error = first_error or e
                plan.log(f"{label} candidate skipped: {type(e).__name__}: {e}")
                candidates.append({"runtime": name, **tag, **({"variant": dict(variant)} if variant else {}),
                                   "status": "skipped", "reason": f"{type(e).__name__}: {e}"[:2000]})
                continue
            rec.update(tag)
            rec.update({"_steps_meta": chain.metas + ([rec["quantization"]] if "quantization" in rec else []),
                        "_last_float": chain.model, "_params_after": None})
            candidates.append(rec)
    return candidates, first_error


def whole_recipe_builder(recipe: Recipe) -> Callable[[JobPlan, dict[str, Any]], dict[str, Any]] | None:
    """The runtime's own whole-recipe build when the recipe names one runtime that has it (torch), else None.

    A runtime with ``build_recipe`` runs every step of a recipe itself, in any order; the others export a
    float model and quantize it with their own toolchain.

    Example:
        >>> r = Recipe.from_dict({"name": "x", "steps": [{"type": "quantize_dynamic"}], "runtime": "auto"})
        >>> whole_recipe_builder(r) is None
        True
    """
    if recipe.runtime == AUTO:
        return None
    return getattr(get_runtime(recipe.runtime), "build_recipe", None)


def build_candidates(plan: JobPlan, extra: dict[str, Any], workdir: Path) -> list[dict[str, Any]]:
    """Stage 2: the candidates of one job (see the module docstring).

    A recipe naming a runtime that builds whole recipes (torch) is one candidate built by that runtime;
    any other (``onnxruntime``, ``openvino``, ``auto``) is built per runtime and variant here.
    """
    whole = whole_recipe_builder(plan.recipe)
    if whole is not None:
        return [whole(plan, extra)]
    return build_in_runtimes(plan, extra, workdir)


__all__ = ["BATCH_CHECK_ROWS", "BATCH_CONSISTENCY_MIN", "BatchDependentOutputsError", "FALLBACK_MAX_SECONDS",
           "batch_consistency", "build_candidates", "build_in_runtimes", "calibration_rows", "candidate_names", "candidate_variants",
           "execution_record", "input_names", "quant_index", "runtime_versions", "whole_recipe_builder"]

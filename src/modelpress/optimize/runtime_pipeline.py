"""One job in a deployment runtime (ONNX Runtime, OpenVINO, torch) or across all of them (``runtime: auto``).

``optimize_model`` hands a recipe whose ``runtime`` is not ``torch`` to ``optimize_in_runtime``:

1. the torch-only steps before the recipe's quantization step (pruning, fine-tuning, distillation) run as
   usual, on torch;
2. each candidate runtime exports that last float model, records its *float* numbers in that runtime
   (``measurements["candidates"][i]["runtime_float"]``), then quantizes with its own toolchain per the
   recipe's quantization step;
3. tuning: a runtime may offer quantizer settings that keep the int8 graph (``Runtime.tunings``, e.g.
   SmoothQuant's strength for a transformer in NNCF); each is built and the most faithful on the selection
   rows is kept, the toolchain's defaults winning ties (``measurements["candidates"][i]["tuning"]``);
4. budget + fallback: whether the budget holds, the per-layer sensitivity ranking and how many layers stay
   float are decided on **selection rows** — validation rows when the model's data has them
   (``TaskData.val_inputs``/``val_labels``), else the calibration inputs judged by fidelity to the float
   model — never on the eval rows the reported metric uses;
5. ``auto`` keeps, among candidates that keep the budget on the selection rows, the best at the recipe's
   ``objective`` (``latency_b1``, ``latency_bN`` = largest measured batch, or ``size``); a candidate that
   cannot be built is recorded with its reason and skipped; the job fails only when none can be built.
   Near ties at a latency objective are first timed again side by side (``_runoff``).

"Before" stays the torch float model (what the user has). Every number is measured on the artifact as
reloaded from disk by its runtime (the deployed thing), and the artifact key includes the runtime versions.

Example:
    >>> from modelpress.optimize.recipes import Recipe
    >>> r = Recipe.from_dict({"name": "x", "steps": [{"type": "quantize_dynamic"}], "runtime": "onnxruntime"})
    >>> candidate_names(r)
    ['onnxruntime']
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from modelpress.optimize.artifacts import artifact_key, atomic_write_json
from modelpress.optimize.backends import quantized_engine
from modelpress.optimize.errors import UserInputError
from modelpress.optimize.measure import (
    as_tuple,
    batch_of,
    compute_metric,
    count_flops,
    count_params,
    host_timing_lock,
    interleaved_latency,
    measure_latency,
    n_samples,
    predict,
)
from modelpress.optimize.recipes import Budget, QATConfig, Recipe, StaticQuantConfig
from modelpress.optimize.runtimes.base import Exported, Runtime, RuntimeUnavailableError
from modelpress.optimize.runtimes.registry import AUTO, get_runtime, runtime_names
from modelpress.optimize.runtimes.torch_rt import TorchHandle
from modelpress.optimize.steps import StepContext, global_sparsity, handler_for
from modelpress.optimize.zoo import ModelSpec, TaskData


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
        batched = predict(fn, _unbatch(batch_of(inputs, 0, n)), batch_size=n)
        single = predict(fn, _unbatch(batch_of(inputs, 0, n)), batch_size=1)
    if batched.shape != single.shape or batched.shape[0] != n:
        return {"rows": n, "min_row_cosine": None, "skipped": f"outputs are not one row per input row "
                                                              f"({tuple(batched.shape)})"}
    b, s = batched.reshape(n, -1).double(), single.reshape(n, -1).double()
    cos = torch.nn.functional.cosine_similarity(b, s, dim=-1)
    same = (b - s).abs().amax(dim=-1) == 0  # all-zero rows have no cosine; identical rows agree by definition
    cos = torch.where(same, torch.ones_like(cos), cos)
    return {"rows": n, "min_row_cosine": float(cos.min()), "max_abs_diff": float((b - s).abs().max())}


class NoCandidateError(UserInputError):
    """``runtime: auto`` could build no candidate; the message lists each runtime's reason."""


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


def _quant_index(recipe: Recipe) -> int | None:
    idx = [i for i, c in enumerate(recipe.steps) if hasattr(handler_for(c), "sensitivity")]
    return idx[-1] if idx else None


def _input_names(spec: ModelSpec, model: nn.Module, n: int) -> list[str]:
    """The spec's input names, else the forward's own argument names (what a serving caller will pass)."""
    names = spec.extra.get("input_names")
    if names:
        return list(names)
    import inspect

    params = [p.name for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return params[:n] if len(params) >= n else [f"input_{i}" for i in range(n)]


def _batches(x: Any, size: int, limit: int | None = None) -> list[tuple[torch.Tensor, ...]]:
    n = n_samples(x)
    out = [batch_of(x, i, min(i + size, n)) for i in range(0, n, size)]
    return out[:limit] if limit else out


def _unbatch(b: tuple[torch.Tensor, ...]) -> Any:
    return b[0] if len(b) == 1 else b


class _Selection:
    """Rows that decisions are made on (never the eval rows), and how to score a model on them.

    With validation rows (``TaskData.val_inputs``, optionally ``val_labels``) the spec's metric is computed
    there. Without them the calibration inputs are used: fidelity metrics against the float model directly;
    accuracy through its conservative proxy top-1 agreement with the float model (accuracy can drop by at most
    the disagreement rate), so a budget met here is a budget the accuracy can keep.
    """

    def __init__(self, spec: ModelSpec, data: TaskData, float_fn: Callable[..., torch.Tensor], batch_size: int,
                 budget: Budget | None) -> None:
        val_in = getattr(data, "val_inputs", None)
        val_labels = getattr(data, "val_labels", None)
        self.batch_size = batch_size
        if val_in is not None and n_samples(val_in) > 0:
            self.inputs, self.labels, self.source = val_in, val_labels, "validation"
        else:
            n = min(n_samples(data.calib_inputs), budget.sensitivity_samples if budget else 256)
            if n == 0:
                raise UserInputError("choosing in a runtime needs calibration or validation inputs, and this "
                                     "model's spec has none")
            self.inputs, self.labels, self.source = _unbatch(batch_of(data.calib_inputs, 0, n)), None, "calibration"
        self.metric = spec.metric
        if self.metric == "accuracy" and self.labels is None:
            self.metric = "top1_agreement"
        self.reference = predict(float_fn, self.inputs, batch_size=batch_size)
        self.before = self.score_outputs(self.reference)

    def score_outputs(self, out: torch.Tensor) -> float:
        return compute_metric(self.metric, out, labels=self.labels, reference=self.reference)  # type: ignore[arg-type]

    def score(self, fn: Callable[..., torch.Tensor]) -> float:
        return self.score_outputs(predict(fn, self.inputs, batch_size=self.batch_size))

    def allows(self, budget: Budget | None, after: float) -> bool:
        return budget is None or budget.allows(before=self.before, after=after)

    def describe(self) -> dict[str, Any]:
        return {"rows": self.source, "samples": n_samples(self.inputs), "metric": self.metric, "before": self.before}


class _Job:
    """The state one runtime job shares across its candidates."""

    def __init__(self, *, spec: ModelSpec, recipe: Recipe, engine: str, data: TaskData, store: Path,
                 key: str, threads: int, warmup: int, runs: int, allowlist: tuple[str, ...],
                 log: Callable[[str], None], lock_dir: Any = None) -> None:
        self.spec, self.recipe, self.engine, self.data, self.store, self.key = spec, recipe, engine, data, store, key
        self.threads, self.warmup, self.runs, self.allowlist, self.log = threads, warmup, runs, allowlist, log
        self.lock_dir = lock_dir
        self.timings: list[dict[str, Any]] = []  # every timing phase: lock wait, start/end, host load
        self.eval_bs = int(spec.extra.get("eval_batch_size", 256))
        self._float_consistent: bool | None = None

    def float_batch_consistent(self, model: nn.Module, inputs: Any) -> bool:
        """Whether the float model itself answers each row alone (a model may mix rows on purpose)."""
        if self._float_consistent is None:
            got = batch_consistency(model, inputs)["min_row_cosine"]
            self._float_consistent = got is not None and got >= 0.9999
        return self._float_consistent

    def load(self, rt: Runtime, path: Path) -> Callable[..., torch.Tensor]:
        if rt.name == "torch":
            # The .mpz is rebuilt from the registered factory: the job's allow-list applies.
            from modelpress.optimize.artifacts import load_artifact

            return load_artifact(path, allowlist=self.allowlist, engine=self.engine).model
        return rt.load(path, self.threads)

    def latencies(self, fn: Callable[..., torch.Tensor], phase: str = "") -> list[dict[str, Any]]:
        # Only the timing holds the host-wide lock (issue 10 item 11): candidates of other jobs on this
        # host are built beside it, but never timed at the same moment.
        with host_timing_lock(self.lock_dir, phase=phase) as rec:
            stats = [measure_latency(fn, self.spec.make_input(b), warmup=self.warmup, runs=self.runs,
                                     threads=self.threads).to_dict() for b in self.spec.latency_batches]
        self.timings.append(rec)
        return stats


def _save_load(job: _Job, rt: Runtime, exp: Exported, path: Path) -> tuple[int, Callable[..., torch.Tensor]]:
    size = rt.save(exp, path)
    return size, job.load(rt, path)


def _fallback(job: _Job, rt: Runtime, float_exp: Exported, qcfg: Any, calib: list[tuple[torch.Tensor, ...]],
              sel: _Selection, first: float, workdir: Path,
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
        job.log(f"{rt.name} fallback: {k} layer(s) float → {sel.metric} {m:.4f} on {sel.source} rows")
        if m > best[0] or ok:
            best = (m, q, k)
        if ok:
            break
    record = {"sensitivity": {"method": "leave_one_float", "rows": sel.source, "scores": scores,
                              "ranking": ranking, "seconds": time.perf_counter() - t0},
              "trials": trials, "chosen_float_layers": best[2] if trials[-1]["within_budget"] else None,
              "max_float_layers": budget.max_float_layers}
    if best[1] is None:
        return rt.quantize(float_exp, qcfg, calib, keep_float=base_keep, workdir=workdir, tuning=tuning), first, record
    return best[1], best[0], record


def _tune(job: _Job, rt: Runtime, float_exp: Exported, qcfg: Any, calib: list[tuple[torch.Tensor, ...]],
          keep: tuple[str, ...], sel: _Selection, default_exp: Exported, default_metric: float,
          options: Sequence[dict[str, Any]], one_trial_s: float,
          workdir: Path) -> tuple[dict[str, Any] | None, Exported, float, dict[str, Any]]:
    """Try the runtime's quantizer settings (``Runtime.tunings``) beside its defaults; keep the most faithful.

    Every option keeps the quantized graph (same layers int8, same kernels), so it is chosen on fidelity
    alone, and only on selection rows: the eval rows the job reports stay unseen. The defaults win ties.
    Bounded like the fallback: skipped when the options would take longer than ``FALLBACK_MAX_SECONDS``.
    """
    estimate = one_trial_s * len(options)
    tried: list[dict[str, Any]] = [{"tuning": None, "selection_metric": default_metric}]
    record: dict[str, Any] = {"rows": sel.source, "metric": sel.metric, "tried": tried, "chosen": None}
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
        job.log(f"{rt.name} tuning {opt}: {sel.metric} {m:.4f} on {sel.source} rows")
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
    qi = _quant_index(recipe)
    if qi is None:
        return [None]
    rt = get_runtime(name)
    if rt.is_available() is not None:
        return [None]
    offered = getattr(rt, "variants", None)
    return list(offered(recipe.steps[qi]) if offered else []) or [None]


def _variant_label(name: str, variant: dict[str, Any] | None) -> str:
    return name + ("" if not variant else " (" + ", ".join(f"{k}={v}" for k, v in sorted(variant.items())) + ")")


def _build_candidate(job: _Job, name: str, float_model: nn.Module, ctx: StepContext, prefix: dict[str, Any],
                     sel: _Selection, ref_out: torch.Tensor, workdir: Path, variant: dict[str, Any] | None = None,
                     shared: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export, measure float, quantize (+ fallback), save, reload, measure. Raises when it cannot be built.

    ``variant`` updates the recipe's quantization step (``Runtime.variants``); ``shared`` carries one runtime's
    export and float numbers from its first variant to the next, so a model is exported once per runtime.
    """
    rt = get_runtime(name)
    reason = rt.is_available()
    if reason is not None:
        raise RuntimeUnavailableError(f"runtime {name!r} is not usable on this worker: {reason}")
    spec, data, recipe = job.spec, job.data, job.recipe
    t0 = time.perf_counter()
    shared = {} if shared is None else shared
    rec: dict[str, Any] = {"runtime": name, "versions": rt.versions()}
    if variant:
        rec["variant"] = dict(variant)
    if name in shared:
        exp, runtime_float = shared[name]
    else:
        example = as_tuple(spec.make_input(2))
        exp = rt.export(float_model, example, _input_names(spec, float_model, len(example)), workdir)
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
            runtime_float.update(_execution(fn_f))
            del fn_f
        shared[name] = (exp, runtime_float)
    if runtime_float is not None:
        rec["runtime_float"] = runtime_float
    qi = prefix["quant_index"]
    q_exp, float_layers = exp, []
    if qi is not None:
        qcfg = recipe.steps[qi] if not variant else recipe.steps[qi].model_copy(update=variant)
        bs = int(getattr(qcfg, "calibration_batch_size", 32))
        calib = _batches(data.calib_inputs, bs, getattr(qcfg, "calibration_batches", None))
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
                job.log(f"{name}: budget broken on {sel.source} rows ({m_sel:.4f}); measuring layer sensitivity")
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
    rec.update(_execution(fn))
    for mname, mfn in spec.extra.get("extra_metrics", {}).items():
        rec.setdefault("metrics", {})[mname] = float(mfn(out, ref_out))
    # Checked on selection rows, after the artifact is final: a check that fails skips the candidate (auto)
    # or fails the job; it chooses nothing among settings, so the eval rows stay unseen either way.
    rec["batch_consistency"] = batch_consistency(fn, sel.inputs)
    if qi is not None and isinstance(recipe.steps[qi], (StaticQuantConfig, QATConfig)):
        got = rec["batch_consistency"]["min_row_cosine"]
        if got is not None and got < BATCH_CONSISTENCY_MIN and job.float_batch_consistent(float_model, sel.inputs):
            raise BatchDependentOutputsError(
                f"the {name} int8 artifact answers a row differently depending on the other rows in its batch "
                f"(per-row cosine {got:.4f} between a batch of {rec['batch_consistency']['rows']} and one row at "
                f"a time; the float model agrees with itself): its numbers would depend on the batch they "
                f"were measured at. Use another runtime (or runtime: auto), or keep the layer after a pooling "
                f"step float (keep_float in the quantization step)")
    rec["_exported"] = q_exp  # kept in memory for the winner's reload check; dropped from the record
    rec["_outputs"] = out
    return rec


def _execution(fn: Callable[..., torch.Tensor]) -> dict[str, Any]:
    """``{"execution": ...}`` when the loaded callable says how its runtime runs it here (after timing), else ``{}``.

    The same file can run at another precision on another CPU (OpenVINO picks bf16 for float parts where the
    CPU has it), so the timings and the metric are only half a record without it.

    Example:
        >>> _execution(lambda x: x)
        {}
    """
    describe = getattr(fn, "execution", None)
    return {"execution": describe()} if callable(describe) else {}


def _objective_value(rec: dict[str, Any], objective: str) -> float:
    if objective == "size":
        return float(rec["bytes"])
    lats = sorted(rec["latency"], key=lambda s: s["batch_size"])
    pick = lats[0] if objective == "latency_b1" else lats[-1]
    return float(pick["median_ms"])


def _runoff(job: _Job, candidates: Sequence[dict[str, Any]], objective: str,
            margin: float | None = None) -> dict[str, Any] | None:
    """Time the candidates that are near-tied at a latency objective again, interleaved, before choosing.

    Each candidate was timed on its own, minutes apart from the others; between two artifacts a few per cent
    apart (the same int8 graph in two runtimes, per-tensor vs per-channel weights) host drift decides which
    one looks faster. So the ones keeping the budget whose objective latency is within ``margin`` of the best
    are reloaded from their files and timed in alternating rounds (``measure.interleaved_latency``) under
    the host timing lock, with as many runs in all as the first timing. Their entry for the objective's
    batch is replaced by the pooled one (``"interleaved": true``; the first kept as ``latency_first``), so
    ``choose`` and the row use the sturdier number. The run-off's record, or None when there was none.
    """
    margin = RUNOFF_MARGIN if margin is None else margin
    if objective == "size" or margin <= 0:
        return None
    keeping = [c for c in candidates if c.get("status") == "built" and c["within_budget_on_selection"]]
    if len(keeping) < 2:
        return None
    best = min(_objective_value(c, objective) for c in keeping)
    near = sorted((c for c in keeping if _objective_value(c, objective) <= best * (1 + margin)),
                  key=lambda c: _objective_value(c, objective))[:RUNOFF_MAX]
    if len(near) < 2:
        return None
    lats = sorted(near[0]["latency"], key=lambda s: s["batch_size"])
    batch = int((lats[0] if objective == "latency_b1" else lats[-1])["batch_size"])
    labels = [f"{i}: " + _variant_label(c["runtime"], c.get("variant")) for i, c in enumerate(near)]
    fns = {lab: job.load(get_runtime(c["runtime"]), Path(c["path"])) for lab, c in zip(labels, near)}
    runs = max(3, math.ceil(job.runs / RUNOFF_ROUNDS))
    warmup = max(1, math.ceil(job.warmup / RUNOFF_ROUNDS))
    with host_timing_lock(job.lock_dir, phase="runoff") as lock_rec:
        got = interleaved_latency(fns, job.spec.make_input(batch), rounds=RUNOFF_ROUNDS, runs=runs,
                                  warmup=warmup, threads=job.threads)
    job.timings.append(lock_rec)
    for lab, c in zip(labels, near):
        i = next(k for k, s in enumerate(c["latency"]) if int(s["batch_size"]) == batch)
        c["latency_first"] = dict(c["latency"][i])
        c["latency"][i] = {**got[lab]["stats"].to_dict(), "interleaved": True,
                           "round_medians_ms": got[lab]["round_medians_ms"]}
    del fns
    record = {"batch_size": batch, "margin": margin, "rounds": RUNOFF_ROUNDS, "runs_per_round": runs,
              "warmup_per_round": warmup, "contenders": labels,
              "median_ms": {lab: got[lab]["stats"].median_ms for lab in labels}}
    job.log(f"run-off at batch {batch}: " + ", ".join(f"{lab} {v:.4f} ms" for lab, v in record["median_ms"].items()))
    return record


def choose(candidates: Sequence[dict[str, Any]], objective: str) -> dict[str, Any]:
    """The winner: among built candidates keeping the budget on selection rows, the lowest objective value;
    if none keeps it, the most faithful on selection rows (the job is then rejected, its numbers kept).

    Example:
        >>> a = {"status": "built", "within_budget_on_selection": True, "bytes": 9, "selection_metric": .9,
        ...      "latency": [{"batch_size": 1, "median_ms": 2.0}, {"batch_size": 64, "median_ms": 9.0}]}
        >>> b = {**a, "bytes": 5, "latency": [{"batch_size": 1, "median_ms": 1.0}, {"batch_size": 64, "median_ms": 20.}]}
        >>> choose([a, b], "latency_bN") is a, choose([a, b], "latency_b1") is b, choose([a, b], "size") is b
        (True, True, True)
    """
    built = [c for c in candidates if c.get("status") == "built"]
    if not built:
        raise NoCandidateError("no runtime could build this job: " + "; ".join(
            f"{c['runtime']}: {c.get('reason')}" for c in candidates))
    keeping = [c for c in built if c["within_budget_on_selection"]]
    if keeping:
        return min(keeping, key=lambda c: (_objective_value(c, objective), c["bytes"]))
    return max(built, key=lambda c: c["selection_metric"])


def optimize_in_runtime(*, model_name: str, spec: ModelSpec, recipe: Recipe, engine: str, store: Path,
                        float_model: nn.Module, content: str, allowlist: tuple[str, ...] = (), threads: int = 1,
                        warmup: int = 10, runs: int = 50, log: Callable[[str], None] = lambda m: None,
                        verify_reload: bool = True, reuse: bool = True, timing_lock_dir: Any = None,
                        model_manifest: dict[str, Any] | None = None) -> Any:
    """Run ``recipe`` with ``recipe.runtime`` (a runtime or ``auto``) on ``float_model``; an ``OptimizeResult``.

    Called by ``optimize_model``; see the module docstring for the flow.
    """
    from modelpress.optimize.artifacts import _publish_object, put_json_object, save_artifact_object
    from modelpress.optimize.pipeline import (OptimizeResult, _cached_result, _Chain, _eval_batch_size, _json_safe,
                                              _metric_at_batch1, _run_steps, _timing_record, before_after_latency,
                                              float_reference)

    store = Path(store)
    names = candidate_names(recipe)
    versions = runtime_versions(names)
    if recipe.runtime != AUTO and "unavailable" in versions[recipe.runtime]:
        raise RuntimeUnavailableError(f"runtime {recipe.runtime!r} is not usable on this worker: "
                                      f"{versions[recipe.runtime]['unavailable']}")
    qi = _quant_index(recipe)
    if qi is not None and qi != len(recipe.steps) - 1:
        raise UserInputError(f"runtime {recipe.runtime!r}: the quantization step ({recipe.steps[qi].type}) must be "
                             "the last step (torch steps run first, then the runtime quantizes)")
    tv = torch.__version__
    key = artifact_key(content, recipe.sha256, engine, tv + "|" + json.dumps(versions, sort_keys=True))
    # Outputs are immutable content-addressed objects; the key's index names the latest result (as in
    # optimize_model), so a re-measure never rewrites what an older row points at.
    if reuse and (stored := _cached_result(store, key, log)) is not None:
        log(f"reusing stored result {key[:12]}")
        stored.reused = True
        return stored

    data = spec.data()
    eval_bs = _eval_batch_size(spec)
    # The model part comes from optimize_model (with the source ref for a model given by its files), so the
    # float .mpz and a torch candidate rebuild on any machine, as in the torch path.
    model_part = model_manifest or {"name": model_name, "spec_name": spec.name, "version": spec.version,
                                    "content_sha256": content}
    base_manifest = {"model": model_part, "engine": engine, "torch_version": tv}
    float_path, float_sha, size_before = save_artifact_object(
        store / "float", float_model, {**base_manifest, "recipe": {"steps": []}, "steps_meta": []})
    log("measuring the float model (torch)")
    ref_out, metric_before = float_reference(float_model, spec, data, eval_bs)
    job = _Job(spec=spec, recipe=recipe, engine=engine, data=data, store=store, key=key, threads=threads,
               warmup=warmup, runs=runs, allowlist=allowlist, log=log, lock_dir=timing_lock_dir)
    probe = spec.make_input(1)
    params_before, flops_before = count_params(float_model), count_flops(float_model, probe)

    ctx = StepContext(spec=spec, data=data, engine=engine, reference=float_model, log=log)
    extra: dict[str, Any] = {"model": _json_safe(dict(spec.extra)), "eval_batch_size": eval_bs}
    with quantized_engine(engine):
        torch_steps = recipe.steps[:qi] if qi is not None else recipe.steps
        chain = _Chain([float_model], [])
        if torch_steps:
            chain = _run_steps(chain, tuple(torch_steps), 0, ctx, log)
        last_float = chain.model
        prefix = {"quant_index": qi, "steps": [s.to_dict() for s in torch_steps], "steps_meta": chain.metas,
                  "manifest": {**base_manifest, "recipe": recipe.to_dict()}}
        # Fidelity on selection rows is judged against the user's float model, like the reported metric.
        sel = _Selection(spec, data, float_model, eval_bs, recipe.budget)
        extra["selection"] = sel.describe()
        candidates: list[dict[str, Any]] = []
        workroot = store / "tmp"
        workroot.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=workroot, prefix=f"{key[:12]}-") as tmp:
            shared: dict[str, Any] = {}
            first_error: Exception | None = None
            for name in names:
                for i, variant in enumerate(candidate_variants(recipe, name)):
                    label = _variant_label(name, variant)
                    log(f"building the {label} candidate")
                    wd = Path(tmp) / name / f"v{i}"
                    wd.mkdir(parents=True)
                    try:
                        candidates.append(_build_candidate(job, name, last_float, ctx, prefix, sel, ref_out, wd,
                                                           variant=variant, shared=shared))
                    except Exception as e:  # noqa: BLE001 - recorded; the job goes on while another can be built
                        first_error = first_error or e
                        log(f"{label} candidate skipped: {type(e).__name__}: {e}")
                        candidates.append({"runtime": name, **({"variant": dict(variant)} if variant else {}),
                                           "status": "skipped", "reason": f"{type(e).__name__}: {e}"[:2000]})
            # One runtime asked for: its own error (with its message and its retry class) when no variant built.
            if recipe.runtime != AUTO and first_error is not None and not any(
                    c.get("status") == "built" for c in candidates):
                raise first_error
            runoff = _runoff(job, candidates, recipe.objective)
            if runoff is not None:
                extra["runoff"] = runoff
            win = choose(candidates, recipe.objective)
            win["chosen"] = True
            metric_after = win["metric"]
            status, reason = "succeeded", None
            budget = recipe.budget
            if budget is not None and not budget.allows(before=metric_before, after=metric_after):
                status = "rejected"
                reason = (f"{spec.metric} fell from {metric_before:.4f} to {metric_after:.4f} in {win['runtime']}, "
                          f"more than the budget allows ({budget.allowed_drop(metric_before):.4f})")
            folder = store / ("rejected" if status == "rejected" else "artifacts")
            folder.mkdir(parents=True, exist_ok=True)
            rt = get_runtime(win["runtime"])
            tmp_art = Path(tmp) / f"artifact{win['suffix']}"
            rt.save(win["_exported"], tmp_art)
            art_path, art_sha, size_after = _publish_object(tmp_art, folder, win["suffix"])
            if verify_reload:
                extra["reload_check"] = _verify(job, rt, art_path, win["_outputs"])
            served = job.load(rt, art_path)
            b1 = _metric_at_batch1(served, data, spec.metric, ref_out)
            # The candidates' timings chose the winner and stay in its record as the evidence; the reported
            # latency is a fresh timing of the published artifact beside the float model, after the choice.
            lat_before, lat_after = before_after_latency(float_model, served, spec, lock_dir=job.lock_dir,
                                                         warmup=warmup, runs=runs, threads=threads,
                                                         timings=job.timings)
            del served
        for c in candidates:
            c.pop("_exported", None)
            c.pop("_outputs", None)
            c.pop("path", None)
    extra["candidates"] = candidates
    extra["runtime_requested"] = recipe.runtime
    extra["objective"] = recipe.objective
    if "metrics" in win:
        extra["metrics_after"] = win["metrics"]
    if "fallback" in win:
        extra["fallback"] = win["fallback"]
    if "execution" in win:
        extra["execution"] = win["execution"]  # the winner's precision and kernels on the host that measured it
    extra["timing"] = _timing_record(job.timings)
    result = OptimizeResult(
        status=status, reason=reason, model_name=spec.name, model_sha256=content, recipe=recipe.to_dict(),
        recipe_sha256=recipe.sha256, engine=engine, torch_version=tv, arch=platform.machine(),
        artifact_key=key, artifact_path=str(art_path), float_artifact_path=str(float_path),
        size_before_bytes=size_before, size_after_bytes=size_after, metric_name=spec.metric,
        metric_before=metric_before, metric_after=metric_after, latency_before=lat_before,
        latency_after=lat_after, params_before=params_before, params_after=count_params(last_float),
        flops_before=flops_before, flops_after=count_flops(last_float, probe),
        sparsity_after=global_sparsity(last_float), float_layers=sorted(win.get("float_layers", [])),
        steps_meta=chain.metas + ([win["quantization"]] if "quantization" in win else []),
        eval_description=data.description, extra=extra,
        artifact_sha256=art_sha, float_artifact_sha256=float_sha, metric_eval_batch_size=eval_bs,
        metric_before_b1=b1["before"], metric_after_b1=b1["after"], metric_b1_rows=b1["rows"],
    )
    result.runtime = win["runtime"]
    result.runtime_versions = win["versions"]
    # Written last: the result object, then the key's index (replaced atomically) naming it.
    _, result_sha = put_json_object(store / "results", {**result.to_dict(), "reused": False})
    atomic_write_json(store / "index" / f"{key}.json", {"key": key, "result_sha256": result_sha})
    return result


def _verify(job: _Job, rt: Runtime, path: Path, measured: torch.Tensor) -> dict[str, Any]:
    """Reload the stored artifact as a user would and require the measured outputs (eval batch)."""
    fn = job.load(rt, path)
    n = min(n_samples(job.data.eval_inputs), job.eval_bs)
    probe = _unbatch(batch_of(job.data.eval_inputs, 0, n))
    got = predict(fn, probe, batch_size=job.eval_bs)
    want = measured[:n]
    diff = float((got - want).abs().max()) if got.shape == want.shape else math.inf
    if not torch.equal(got, want):
        raise RuntimeError(f"artifact {path.name} does not reproduce the measured outputs after reload "
                           f"(max abs difference {diff}); this is a bug in the {rt.name} adapter's save/load")
    return {"samples": n, "max_abs_diff": diff, "equal": True}


__all__ = ["BatchDependentOutputsError", "NoCandidateError", "batch_consistency", "candidate_names",
           "candidate_variants", "choose",
           "optimize_in_runtime", "runtime_versions"]

"""One job as a library call (no Celery, no database): the outline of its five stages.

1. **resolve** the source (``sources.resolve``): a registered model or a user's files, to a float model,
   its spec (rows and metric) and a content id;
2. **build candidates** (``candidates``): the recipe's technique steps, then each runtime's export and
   quantization, per variant (torch runs a recipe naming it whole: ``runtimes.torch_recipe``);
3. **choose** (``choose``) on selection rows (validation, else calibration), never on the eval rows;
4. **measure** the choice on the eval rows (``evaluate``) and time it afresh beside the float model,
   after every choice is made (``measure.before_after_latency``);
5. **publish** (``publish``): save once, reload and check, store the result under the artifact key.

The key hashes (model content, recipe, engine, torch and runtime versions): a second call with the same
inputs, e.g. a redelivered task, finds the stored result through ``index/<key>.json`` and returns it
(``reused``) when the objects it names are intact.

A long step (training, distillation) reports how far it is through ``progress`` (a callable taking one
JSON-able dict, handed to it as ``StepContext.progress``) and keeps its training state in
``<store>/checkpoints/<key>`` (``StepContext.checkpoint_dir``): the folder outlives a run that dies, so the
same job delivered again resumes there, and it is removed once the job's result is written (issue 22).

Example:
    >>> from modelpress.optimize.job import optimize_model  # doctest: +SKIP
    >>> r = optimize_model(model_name="mlp", recipe=resolve_recipe("dynamic-int8"),
    ...                    engine="fbgemm", store="/tmp/store")  # doctest: +SKIP
    >>> r.size_before_bytes / r.size_after_bytes  # doctest: +SKIP
    3.85
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn

from modelpress.errors import UserInputError
from modelpress.filemodes import make_private_dirs
from modelpress.optimize.backends import quantized_engine
from modelpress.optimize.candidates import (build_candidates, candidate_names, quant_index, runtime_versions,
                                            whole_recipe_builder)
from modelpress.optimize.choose import choose, runoff
from modelpress.optimize.evaluate import metric_at_batch1, timing_record
from modelpress.optimize.measure import before_after_latency, predict
from modelpress.optimize.outputs import OutputsMetric
from modelpress.optimize.plan import JobPlan, measure_float, plan_key
from modelpress.optimize.publish import publish_artifact, verdict, write_result
from modelpress.optimize.recipes import Recipe
from modelpress.optimize.result import OptimizeResult, cached_result, json_safe
from modelpress.optimize.runtimes.base import RuntimeUnavailableError
from modelpress.optimize.runtimes.registry import AUTO
from modelpress.optimize.sources import resolve as sources_resolve
from modelpress.optimize.sources.ref import NEEDS_TRAINING
from modelpress.optimize.spec import ModelSpec


class OnnxExportRequestError(UserInputError, ValueError):
    """An ONNX export that cannot be done for this recipe (e.g. of a torch.ao int8 result)."""


def optimize_model(*, model_name: str | None = None, recipe: Recipe, engine: str, store: str | Path,
                   model_ref: Any = None, stored_ref: Any = None, weights: str | None = None,
                   allowlist: tuple[str, ...] = (), max_weights_bytes: int = 2 * 1024**3, threads: int = 1,
                   warmup: int = 10, runs: int = 50, log: Callable[[str], None] = lambda m: None,
                   onnx_export: Literal["float", "result"] | None = None, verify_reload: bool = True,
                   reuse: bool = True, timing_lock_dir: str | os.PathLike[str] | None = None,
                   progress: Callable[[dict[str, Any]], None] = lambda p: None,
                   deadline: float | None = None) -> OptimizeResult:
    """Optimize a model with ``recipe`` for ``engine``; artifacts go under ``store``.

    The model is a registered ``model_name`` or a ``model_ref`` (``optimize.sources.ModelRef``, its paths
    local files: an HF folder, torchvision/timm weights, a .pt2, with its data). ``stored_ref`` (the same
    ref with store refs, as in the job row) is recorded in the artifact so that ``modelpress.load`` can
    fetch the files on another machine. ``onnx_export`` also exports the float model (or a float torch
    result, e.g. pruned) to ONNX and checks it in onnxruntime (``extra["onnx"]``). Latency is timed under
    the host-wide lock in ``timing_lock_dir``; ``extra["timing"]`` records waits and load. ``progress`` is
    called by long steps with a dict such as ``{"step": "distill_float", "iteration": 120, "of": 600,
    "loss": 0.031, "elapsed_s": 41.2}``, every few seconds, in the job's own thread: it must return quickly.
    ``deadline`` is the ``time.monotonic()`` of the job's soft time limit: a search tries no level that would
    not fit before it, and its ``polish_seconds`` are bounded by it (without one, levels all run and polishing
    is spent in full).

    Example:
        >>> seen = []
        >>> optimize_model(model_name="mlp", recipe=recipe, engine="fbgemm", store=tmp,
        ...                progress=seen.append)  # doctest: +SKIP
    """
    _check_onnx_request(onnx_export, recipe)
    source = sources_resolve.resolve(model_name=model_name, model_ref=model_ref, weights=weights, allowlist=allowlist,
                                     max_bytes=max_weights_bytes, cache_dir=Path(store) / "builtin")
    if source.ref is not None:
        sources_resolve.refuse_unsupported_steps(source.ref, [c.type for c in recipe.steps])
    name = model_name or (source.ref.name if source.ref is not None else source.spec.name)
    # "name" is what the model was resolved by (entry point or allow-listed module:attr), so that
    # load_artifact can resolve it again; "spec_name" is the spec's own name.
    manifest: dict[str, Any] = {"name": name, "spec_name": source.spec.name, "version": source.spec.version,
                                "content_sha256": source.content}
    if source.ref is not None:
        manifest["ref"] = source.ref.to_dict()
        if stored_ref is not None:
            manifest["stored_ref"] = stored_ref if isinstance(stored_ref, dict) else stored_ref.to_dict()
    return run_model(model_name=name, spec=source.spec, recipe=recipe, engine=engine, store=Path(store),
                     float_model=source.model, content=source.content, allowlist=allowlist, threads=threads,
                     warmup=warmup, runs=runs, log=log, verify_reload=verify_reload, reuse=reuse,
                     timing_lock_dir=timing_lock_dir, model_manifest=manifest, onnx_export=onnx_export,
                     progress=progress, deadline=deadline)


def run_model(*, model_name: str, spec: ModelSpec, recipe: Recipe, engine: str, store: str | Path,
              float_model: nn.Module, content: str, allowlist: tuple[str, ...] = (), threads: int = 1,
              warmup: int = 10, runs: int = 50, log: Callable[[str], None] = lambda m: None,
              verify_reload: bool = True, reuse: bool = True, timing_lock_dir: Any = None,
              model_manifest: dict[str, Any] | None = None,
              onnx_export: Literal["float", "result"] | None = None,
              progress: Callable[[dict[str, Any]], None] = lambda p: None,
              deadline: float | None = None) -> OptimizeResult:
    """Stages 2–5 for a model already resolved: candidates, choice, measurement, publishing.

    ``progress`` and the job's checkpoint folder reach every step as in ``optimize_model``.

    Example:
        >>> run_model(model_name="mlp", spec=spec, recipe=recipe, engine="fbgemm", store=tmp,
        ...           float_model=model, content="f" * 64)  # doctest: +SKIP
    """
    if spec.extra.get("task") == "causal-lm":  # its own numbers (perplexity, decode speed) and runtimes: ``optimize.lm``
        from modelpress.optimize.lm.job import run_lm

        return run_lm(model_name=model_name, spec=spec, recipe=recipe, engine=engine, store=store,
                      float_model=float_model, content=content, threads=threads, log=log, reuse=reuse,
                      timing_lock_dir=timing_lock_dir, model_manifest=model_manifest, progress=progress)
    store = Path(store)
    plan = JobPlan(model_name=model_name, spec=spec, recipe=recipe, engine=engine, store=store,
                   float_model=float_model, content=content, key=_key(recipe, content, engine),
                   model_manifest=model_manifest or {"name": model_name, "spec_name": spec.name,
                                                     "version": spec.version, "content_sha256": content},
                   allowlist=allowlist, threads=threads, warmup=warmup, runs=runs, log=log, lock_dir=timing_lock_dir,
                   progress=progress, deadline=deadline)
    # ``reuse=False`` re-measures (a nightly run watching for drift, --force): new objects, the index re-pointed.
    if reuse and (stored := cached_result(store, plan.key, log)) is not None:
        log(f"reusing stored result {plan.key[:12]}")
        _drop_checkpoints(plan)  # left by a run that died between writing the result and removing them
        stored.reused = True
        return stored
    _check_outputs_fit_steps(spec, recipe)
    torch.set_num_threads(threads)
    # Before any step runs, and kept when a run dies or fails transiently: a run that dies mid-way leaves
    # its training state here for the same job delivered again (same key) to resume from.
    make_private_dirs(plan.checkpoint_dir)
    workroot = store / "tmp"
    make_private_dirs(workroot)
    try:
        result = _run_plan(plan, recipe, spec, workroot, verify_reload=verify_reload, onnx_export=onnx_export)
    except UserInputError:
        # Not retried, and a redelivery fails the same way: the training state cannot serve any later run.
        _drop_checkpoints(plan)
        raise
    # The result (succeeded or rejected) is stored and indexed: a redelivery now finds it, not the checkpoints.
    _drop_checkpoints(plan)
    return result


def _run_plan(plan: JobPlan, recipe: Recipe, spec: ModelSpec, workroot: Path, *, verify_reload: bool,
              onnx_export: Literal["float", "result"] | None) -> OptimizeResult:
    engine, float_model = plan.engine, plan.float_model
    extra: dict[str, Any] = {"model": json_safe(dict(spec.extra)), "eval_batch_size": plan.eval_bs}
    with quantized_engine(engine), tempfile.TemporaryDirectory(dir=workroot, prefix=f"{plan.key[:12]}-") as tmp:
        base = measure_float(plan)
        candidates = build_candidates(plan, extra, Path(tmp))                             # 2. candidates
        win = _choose(plan, candidates, extra)                                            # 3. choice
        status, reason = verdict(before=base.metric, after=win["metric"], budget=recipe.budget,
                                 metric=spec.metric, runtime=win["runtime"], note=win.get("_reject_note", ""))
        art = publish_artifact(plan, win, status=status, workdir=Path(tmp), extra=extra, verify=verify_reload)
        b1 = metric_at_batch1(art.served, plan.rows(), spec.metric, base.outputs)         # 4. measure
        latency = before_after_latency(float_model, art.served, spec, lock_dir=plan.lock_dir, warmup=plan.warmup,
                                       runs=plan.runs, threads=plan.threads, timings=plan.timings)
        _record_choice(extra, win, candidates, plan)
        if isinstance(spec.metric, OutputsMetric):
            extra["outputs"] = _outputs_record(spec.metric, plan, art.served, base.outputs)
        if onnx_export is not None:
            extra["onnx"] = _export_onnx(float_model if onnx_export == "float" else win["_exported"].handle.module,
                                         spec, plan.store / "onnx" / f"{plan.key}-{onnx_export}.onnx")
        result = write_result(plan, win, art, status=status, reason=reason, metric_after=win["metric"],  # 5. publish
                              b1=b1, latency=latency, extra=extra)
    return result


def _check_outputs_fit_steps(spec: ModelSpec, recipe: Recipe) -> None:
    # Known only once the program has run (submit cannot see it without torch): training steps learn from
    # one output (logits or an embedding), and a loss over several would weigh outputs no one has stated.
    training = [s.type for s in recipe.steps if s.type in NEEDS_TRAINING]
    if training and (why := spec.extra.get("no_training")):  # the source knows this model cannot train yet
        raise UserInputError(f"recipe {recipe.name!r}: step {training[0]!r} {why}; use a post-training recipe "
                             "(static-int8, dynamic-int8 or one with prune_l1_unstructured)")
    if not isinstance(spec.metric, OutputsMetric):
        return
    if training:
        names = ", ".join(o.name for o in spec.metric.outputs)
        raise UserInputError(f"recipe {recipe.name!r}: step {training[0]!r} trains on one output, and "
                             f"this program returns {len(spec.metric.outputs)} ({names}); use a post-training "
                             "recipe (static-int8, dynamic-int8 or one with prune_l1_unstructured)")


def _outputs_record(metric: OutputsMetric, plan: JobPlan, served: Callable[..., Any],
                    before: torch.Tensor) -> list[dict[str, Any]]:
    """Each output's metric before and after on the eval rows, the primary one marked (it carries the budget)."""
    rows = plan.rows()
    after = predict(served, rows.eval_inputs, batch_size=plan.eval_bs)
    b = metric.each(before, labels=rows.eval_labels, reference=before)
    a = metric.each(after, labels=rows.eval_labels, reference=before)
    return [{"output": x["output"], "metric": x["metric"], "before": x["value"], "after": y["value"],
             "primary": i == metric.primary} for i, (x, y) in enumerate(zip(b, a))]


def _drop_checkpoints(plan: JobPlan) -> None:
    # A folder left behind costs disk only (the next run with this key resumes from it or overwrites it):
    # say so, but never fail a job whose result is already stored.
    try:
        shutil.rmtree(plan.checkpoint_dir)
    except FileNotFoundError:
        pass
    except OSError as e:
        plan.log(f"could not remove the checkpoint folder {plan.checkpoint_dir}: {e}")


def _key(recipe: Recipe, content: str, engine: str) -> str:
    # A runtime building the whole recipe on torch keys on torch alone; an exported one on its versions too.
    if whole_recipe_builder(recipe) is not None:
        return plan_key(content=content, recipe=recipe, engine=engine, versions=None)
    names = candidate_names(recipe)
    versions = runtime_versions(names)
    if recipe.runtime != AUTO and "unavailable" in versions[recipe.runtime]:
        raise RuntimeUnavailableError(f"runtime {recipe.runtime!r} is not usable on this worker: "
                                      f"{versions[recipe.runtime]['unavailable']}")
    return plan_key(content=content, recipe=recipe, engine=engine, versions=versions)


def _choose(plan: JobPlan, candidates: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    # One candidate: nothing to choose between (a torch recipe, or one runtime with one variant).
    if len(candidates) == 1 and candidates[0].get("status") == "built":
        win = candidates[0]
    else:
        if (record := runoff(plan, candidates, plan.recipe.objective)) is not None:
            extra["runoff"] = record
        win = choose(candidates, plan.recipe.objective)
    win["chosen"] = True
    return win


def _record_choice(extra: dict[str, Any], win: dict[str, Any], candidates: list[dict[str, Any]], plan: JobPlan) -> None:
    if "selection" in extra:  # built per runtime: every candidate's evidence goes into the row
        extra["candidates"] = [{k: v for k, v in c.items() if not k.startswith("_") and k != "path"}
                               for c in candidates]
        extra["runtime_requested"] = plan.recipe.runtime
        extra["objective"] = plan.recipe.objective
        for k in ("fallback", "execution"):
            if k in win:
                extra[k] = win[k]
    if "metrics" in win:
        extra["metrics_after"] = win["metrics"]
    if "frontier" in extra:  # a searched recipe: the level the chosen artifact was cut at
        extra["chosen_level"] = win.get("level")
    extra["timing"] = timing_record(plan.timings)


def _check_onnx_request(onnx_export: Any, recipe: Recipe) -> None:
    if onnx_export not in (None, "float", "result"):
        raise OnnxExportRequestError(f"onnx_export must be 'float', 'result' or None, not {onnx_export!r}")
    if onnx_export == "result" and quant_index(recipe) is not None:
        raise OnnxExportRequestError(
            "onnx_export='result' cannot export a torch.ao int8 model (torch.onnx has no exporter for its "
            "packed kernels); use onnx_export='float' and quantize the ONNX file with onnxruntime")


def _export_onnx(model: nn.Module, spec: ModelSpec, path: Path) -> dict[str, Any]:
    from modelpress.optimize.onnx_export import export_and_check

    report = export_and_check(model, spec.make_input(2), path, input_names=spec.extra.get("input_names"))
    return report.to_dict()


__all__ = ["OnnxExportRequestError", "optimize_model", "run_model"]

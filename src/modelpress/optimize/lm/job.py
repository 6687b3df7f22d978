"""A causal LM's job: weight-only quantization in each LM runtime, chosen on validation text, measured on eval text.

The same five stages as every job (``optimize.job``), with an LM's own numbers:

1. the float model's perplexity on the validation and eval blocks, and its file (``model.safetensors``) stored;
2. **candidates**: the recipe's ``quantize_weight_only`` step built in each runtime (``lm.adapters``; ``auto``
   builds every one this host has), once per data-aware option the runtime offers (AWQ, scale estimation),
   each scored on the *validation* blocks;
3. **choice**: among candidates whose validation perplexity keeps the budget (a relative increase), the one
   with the most decode tokens/s, timed side by side (``lm.timing``, interleaved, under the host timing lock);
   those within ``SPEED_TIE`` of the fastest are equally fast, and the lowest validation perplexity wins;
   with none inside the budget, the lowest validation perplexity, and the job is ``rejected``;
4. **measure** the chosen file, reloaded from the store as a user would load it, on the eval blocks: perplexity
   and next-token agreement with float; then time it afresh beside the float model (prefill ms at a stated
   prompt length, decode tokens/s with the KV cache): the figures that chose it are evidence, not the report;
5. **publish**: the artifact under ``artifacts/`` (or ``rejected/``), the result under ``results/``, the index.

Example:
    >>> r = optimize_model(model_ref=ref, recipe=resolve_recipe("int4-weight-only"), engine="x86",
    ...                    store=tmp)                                                    # doctest: +SKIP
    >>> r.metric_name, r.extra["lm"]["next_token_agreement"]                             # doctest: +SKIP
    ('perplexity', 0.93)
"""

from __future__ import annotations

import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from modelpress.errors import UserInputError
from modelpress.filemodes import make_private_dirs
from modelpress.optimize.artifacts import atomic_write_json, publish_object, put_json_object
from modelpress.optimize.evaluate import timing_record
from modelpress.optimize.lm.adapters import LM_RUNTIMES, get_lm_runtime
from modelpress.optimize.lm.metrics import LMScores, next_token_agreement, perplexity, score_blocks
from modelpress.optimize.lm.timing import lm_latency, prompt_from
from modelpress.optimize.lm.torch_lm import TorchLM
from modelpress.optimize.measure import count_flops, count_params, global_sparsity, host_timing_lock
from modelpress.optimize.plan import plan_key
from modelpress.optimize.recipes import Budget, Recipe, WeightOnlyConfig
from modelpress.optimize.result import OptimizeResult, cached_result, json_safe
from modelpress.optimize.runtimes.registry import AUTO
from modelpress.optimize.spec import ModelSpec

#: Decode timing: a prompt of this many tokens (or the block, if shorter), then this many new tokens, batch 1.
PROMPT_TOKENS = 64
NEW_TOKENS = 32
#: Candidates are timed (to choose) in this many interleaved rounds; the reported timing uses ``FINAL_ROUNDS``.
CHOICE_ROUNDS = 3
FINAL_ROUNDS = 5
#: Candidates decoding within this fraction of the fastest count as equally fast; the most faithful of them wins.
SPEED_TIE = 0.05


def lm_allows(budget: Budget | None, *, before: float, after: float) -> bool:
    """Whether perplexity ``after`` keeps the budget over ``before`` (lower is better: the budget is an increase).

    Example:
        >>> lm_allows(Budget(max_drop=0.05, relative=True), before=20.0, after=20.9)
        True
        >>> lm_allows(Budget(max_drop=0.05, relative=True), before=20.0, after=21.1)
        False
    """
    return budget is None or budget.allows(before=-before, after=-after)


def _step(recipe: Recipe) -> WeightOnlyConfig:
    steps = list(recipe.steps)
    if len(steps) != 1 or not isinstance(steps[0], WeightOnlyConfig):
        names = ", ".join(repr(s.type) for s in steps) or "no step"
        raise UserInputError(f"recipe {recipe.name!r}: a causal LM takes one step, 'quantize_weight_only' "
                             f"(recipes int8-weight-only, int4-weight-only); this recipe has {names}")
    return steps[0]


def _runtimes(recipe: Recipe) -> list[str]:
    if recipe.runtime == AUTO:
        return list(LM_RUNTIMES)
    if recipe.runtime not in LM_RUNTIMES:
        raise UserInputError(f"recipe {recipe.name!r}: runtime {recipe.runtime!r} does not serve causal LMs yet; "
                             f"use one of {', '.join(LM_RUNTIMES)} or auto")
    return [recipe.runtime]


def lm_key(*, content: str, recipe: Recipe, engine: str) -> str:
    """The artifact key of a causal LM's job: the model, the recipe, the engine and every candidate runtime's
    package versions (an upgrade measures anew)."""
    versions = {name: get_lm_runtime(name).versions() for name in _runtimes(recipe)}
    return plan_key(content=content, recipe=recipe, engine=engine, versions=versions)


def run_lm(*, model_name: str, spec: ModelSpec, recipe: Recipe, engine: str, store: str | Path,
           float_model: nn.Module, content: str, threads: int = 1, log: Callable[[str], None] = lambda m: None,
           reuse: bool = True, timing_lock_dir: Any = None, model_manifest: dict[str, Any] | None = None,
           progress: Callable[[dict[str, Any]], None] = lambda p: None, warmup: int = 1, runs: int = 3
           ) -> OptimizeResult:
    """Run a causal LM's job (see the module docstring); ``runs`` timed generations per round.

    Example:
        >>> run_lm(model_name="lm", spec=spec, recipe=resolve_recipe("int8-weight-only"), engine="x86",
        ...        store=tmp, float_model=model, content="f" * 64)                     # doctest: +SKIP
    """
    cfg = _step(recipe)
    store = Path(store)
    key = lm_key(content=content, recipe=recipe, engine=engine)
    if reuse and (stored := cached_result(store, key, log)) is not None:
        log(f"reusing stored result {key[:12]}")
        stored.reused = True
        return stored
    torch.set_num_threads(threads)
    workroot = store / "tmp"
    make_private_dirs(workroot)
    with tempfile.TemporaryDirectory(dir=workroot, prefix=f"{key[:12]}-") as tmp:
        return _run(model_name=model_name, spec=spec, recipe=recipe, cfg=cfg, engine=engine, store=store,
                    model=float_model, content=content, key=key, threads=threads, log=log, lock_dir=timing_lock_dir,
                    manifest=model_manifest or {}, progress=progress, workdir=Path(tmp), warmup=warmup,
                    runs=max(1, runs))


def _run(*, model_name: str, spec: ModelSpec, recipe: Recipe, cfg: WeightOnlyConfig, engine: str, store: Path,
         model: nn.Module, content: str, key: str, threads: int, log: Callable[[str], None], lock_dir: Any,
         manifest: dict[str, Any], progress: Callable[[dict[str, Any]], None], workdir: Path, warmup: int,
         runs: int) -> OptimizeResult:
    data = spec.data()
    bs = int(spec.extra.get("eval_batch_size", 8))
    val_ids, val_mask = data.val_inputs  # type: ignore[misc]
    eval_ids, eval_mask = data.eval_inputs  # type: ignore[misc]
    calib_ids, calib_mask = data.calib_inputs  # type: ignore[misc]
    float_runner = TorchLM(model)
    log("measuring the float model on validation and eval text")
    f_val = score_blocks(float_runner, val_ids, val_mask, batch_size=bs)
    f_eval = score_blocks(float_runner, eval_ids, eval_mask, batch_size=bs)
    ppl_val0, ppl_eval0 = perplexity(f_val), perplexity(f_eval)
    float_path, float_sha, float_bytes = _store_float(model, store, workdir)
    calib_rows = [calib_ids[i][calib_mask[i] > 0] for i in range(int(calib_ids.shape[0]))]

    candidates: list[dict[str, Any]] = []
    for name in _runtimes(recipe):
        rt = get_lm_runtime(name)
        if (why := rt.unavailable()) is not None:
            candidates.append({"runtime": name, "status": "unavailable", "reason": why})
            continue
        for option in rt.options(cfg):
            label = name + "".join(f"+{k}" for k, v in sorted(option.items()) if v)
            progress({"step": "quantize_weight_only", "candidate": label})
            log(f"building {label}")
            t0 = time.monotonic()
            try:
                path, meta = rt.build(model, cfg, option, calib_rows, workdir / label.replace("+", "_"))
                runner = rt.load(path, threads)
                s = score_blocks(runner, val_ids, val_mask, batch_size=bs)
            except UserInputError:
                raise
            except Exception as e:  # noqa: BLE001 - one runtime failing leaves the others; the reason is kept
                if type(e).__module__.startswith(("billiard", "celery")):
                    raise
                candidates.append({"runtime": name, "option": option, "label": label, "status": "failed",
                                   "reason": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"})
                continue
            ppl = perplexity(s)
            candidates.append({"runtime": name, "option": option, "label": label, "status": "built",
                               "bytes": path.stat().st_size, "validation_perplexity": ppl,
                               "validation_next_token_agreement": next_token_agreement(s, f_val),
                               "within_budget_on_validation": lm_allows(recipe.budget, before=ppl_val0, after=ppl),
                               "build_s": round(time.monotonic() - t0, 2), "meta": meta, "suffix": rt.suffix,
                               "_path": path, "_runner": runner})
    built = [c for c in candidates if c["status"] == "built"]
    if not built:
        reasons = "; ".join(f"{c['runtime']}: {c['reason']}" for c in candidates)
        raise UserInputError(f"recipe {recipe.name!r}: no runtime could build this causal LM ({reasons})")
    timings: list[dict[str, Any]] = []
    win = _choose(built, val_ids, val_mask, threads=threads, lock_dir=lock_dir, timings=timings, warmup=warmup,
                  runs=runs)

    # Published first, then reloaded from the store: what is measured and timed is the file a user gets.
    status_guess = "artifacts" if win["within_budget_on_validation"] else "rejected"
    rt = get_lm_runtime(win["runtime"])
    served, art_path, art_sha, art_bytes, reload = _publish(rt, win, store, status_guess, workdir, eval_ids,
                                                            eval_mask, threads)
    s_eval = score_blocks(served, eval_ids, eval_mask, batch_size=bs)
    ppl_eval, agree = perplexity(s_eval), next_token_agreement(s_eval, f_eval)
    ok = lm_allows(recipe.budget, before=ppl_eval0, after=ppl_eval)
    status = "succeeded" if ok and win["within_budget_on_validation"] else "rejected"
    if (status == "rejected") != (status_guess == "rejected"):  # the verdict on eval rows moved it
        art_path, art_sha = _move(art_path, store / ("rejected" if status == "rejected" else "artifacts"))
    reason = None
    if status == "rejected":
        allowed = recipe.budget.allowed_drop(ppl_eval0) if recipe.budget else 0.0
        reason = (f"perplexity rose from {ppl_eval0:.4f} to {ppl_eval:.4f} in {win['runtime']}, more than the budget "
                  f"allows (+{allowed:.4f})" if not ok else
                  f"no candidate kept the budget on validation text (the closest, {win['label']}, reached "
                  f"{win['validation_perplexity']:.4f} against float's {ppl_val0:.4f})")

    prompt = prompt_from(eval_ids, eval_mask, batch=1, tokens=min(PROMPT_TOKENS, int(eval_ids.shape[1]) - 1))
    with host_timing_lock(lock_dir, phase="lm final") as rec:
        final = lm_latency({"float": float_runner, "chosen": served}, prompt, new_tokens=NEW_TOKENS,
                           rounds=FINAL_ROUNDS, runs=runs, warmup=warmup, threads=threads)
    timings.append(rec)

    extra: dict[str, Any] = {
        "model": json_safe(dict(spec.extra)),
        "lm": {"next_token_agreement": agree, "eval_tokens": s_eval.tokens, "validation_tokens": f_val.tokens,
               "validation_perplexity_before": ppl_val0, "latency": final, "chosen": win["label"],
               "prompt_tokens": int(prompt.shape[1]), "new_tokens": NEW_TOKENS},
        "candidates": [{k: v for k, v in c.items() if not k.startswith("_")} for c in candidates],
        "runtime_requested": recipe.runtime, "objective": "decode_tokens_per_s", "reload_check": reload,
        "selection": {"rows": "validation", "blocks": int(val_ids.shape[0]), "metric": "perplexity",
                      "before": ppl_val0},
        "timing": timing_record(timings),
    }
    params = count_params(model)
    # By keyword: a causal LM's second positional argument is its cache in some architectures (GPT-2), not the mask.
    flops = count_flops(lambda ids, mask: model(input_ids=ids, attention_mask=mask),  # type: ignore[arg-type]
                        (eval_ids[:1], eval_mask[:1]))
    result = OptimizeResult(
        status=status, reason=reason, model_name=spec.name, model_sha256=content, recipe=recipe.to_dict(),
        recipe_sha256=recipe.sha256, engine=engine, torch_version=torch.__version__, arch=platform.machine(),
        artifact_key=key, artifact_path=str(art_path), float_artifact_path=str(float_path),
        size_before_bytes=float_bytes, size_after_bytes=art_bytes, metric_name="perplexity",
        metric_before=ppl_eval0, metric_after=ppl_eval,
        latency_before=[_latency_record(final["float"])], latency_after=[_latency_record(final["chosen"])],
        # Weight-only quantization changes how weights are stored, not how many there are or the multiply-adds
        # run: both counted once on the float model (one eval block's forward for the flops).
        params_before=params, params_after=params, flops_before=flops, flops_after=flops,
        sparsity_after=global_sparsity(model), float_layers=[], steps_meta=[win["meta"]],
        eval_description=data.description, extra=extra, artifact_sha256=art_sha, float_artifact_sha256=float_sha,
        metric_eval_batch_size=bs, runtime=win["runtime"],
        runtime_versions=get_lm_runtime(win["runtime"]).versions(),
    )
    _, result_sha = put_json_object(store / "results", {**result.to_dict(), "reused": False})
    atomic_write_json(store / "index" / f"{key}.json", {"key": key, "result_sha256": result_sha})
    return result


def _latency_record(t: dict[str, Any]) -> dict[str, Any]:
    """One LM timing as the job row's latency record: the prefill is the call timed at a batch size (its
    ``median_ms``/``p90_ms``); decode speed rides beside it."""
    return {"batch_size": t["batch_size"], "median_ms": t["prefill_median_ms"], "p90_ms": t["prefill_p90_ms"],
            "kind": "prefill", "input_shape": [[t["batch_size"], t["prompt_tokens"]]], **t}


def _choose(built: list[dict[str, Any]], ids: torch.Tensor, mask: torch.Tensor, *, threads: int, lock_dir: Any,
            timings: list[dict[str, Any]], warmup: int, runs: int) -> dict[str, Any]:
    """The fastest decoder among candidates keeping the budget on validation text; without any, the most faithful."""
    within = [c for c in built if c["within_budget_on_validation"]]
    if not within:
        win = min(built, key=lambda c: c["validation_perplexity"])
    elif len(within) == 1:
        win = within[0]
    else:
        prompt = prompt_from(ids, mask, batch=1, tokens=min(PROMPT_TOKENS, int(ids.shape[1]) - 1))
        with host_timing_lock(lock_dir, phase="lm choice") as rec:
            t = lm_latency({c["label"]: c["_runner"] for c in within}, prompt, new_tokens=NEW_TOKENS,
                           rounds=CHOICE_ROUNDS, runs=runs, warmup=warmup, threads=threads)
        timings.append(rec)
        for c in within:
            c["choice_timing"] = t[c["label"]]
        best = max(c["choice_timing"]["decode_tokens_per_s"] for c in within)
        # Options of one runtime (AWQ, scale estimation, clipping) change the numbers, not the kernels: their
        # speeds differ by noise only. Among those as fast as the fastest (within SPEED_TIE), the most faithful.
        tied = [c for c in within if c["choice_timing"]["decode_tokens_per_s"] >= (1 - SPEED_TIE) * best]
        win = min(tied, key=lambda c: (c["validation_perplexity"], c["bytes"]))
    win["chosen"] = True
    return win


def _store_float(model: nn.Module, store: Path, workdir: Path) -> tuple[Path, str, int]:
    """The float model's weights as one safetensors object (the "before" size: what deploying it needs)."""
    from safetensors.torch import save_model

    folder = store / "float"
    make_private_dirs(folder)
    tmp = workdir / "float.safetensors"
    save_model(model, str(tmp))  # shared (tied) tensors once, as save_pretrained stores them
    return publish_object(tmp, folder, ".safetensors")


def _publish(rt: Any, win: dict[str, Any], store: Path, folder: str, workdir: Path, ids: torch.Tensor,
             mask: torch.Tensor, threads: int) -> tuple[Any, Path, str, int, dict[str, Any]]:
    """Copy the chosen file into the store, reload it from there and check it gives the candidate's logits."""
    target = store / folder
    make_private_dirs(target)
    tmp = workdir / f"artifact{win['suffix']}"
    shutil.copyfile(win["_path"], tmp)
    path, sha, size = publish_object(tmp, target, win["suffix"])
    served = rt.load(path, threads)
    n = min(4, int(ids.shape[0]))
    with torch.inference_mode():
        want = win["_runner"].logits(ids[:n], mask[:n])
        got = served.logits(ids[:n], mask[:n])
    diff = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
    if not torch.equal(got, want):
        raise RuntimeError(f"artifact {path.name} does not reproduce the candidate's logits after reload (max abs "
                           f"difference {diff}); this is a bug in the {rt.name} LM adapter's save/load")
    return served, path, sha, size, {"blocks": n, "max_abs_diff": diff, "equal": True}


def _move(path: Path, folder: Path) -> tuple[Path, str]:
    make_private_dirs(folder)
    dest = folder / path.name
    path.replace(dest)
    return dest, path.name.split(".")[0]


__all__ = ["lm_allows", "lm_key", "run_lm"]

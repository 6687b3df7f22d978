"""The torch runtime's whole-recipe build: every step on torch, in the recipe's order, as one candidate.

ONNX Runtime and OpenVINO take a float model and quantize it with their own toolchain, so the recipe's
quantization step must come last for them (``candidates.build_in_runtimes``). Torch can run every step
itself, in any order (prune → quantize → fine-tune), so a recipe naming ``runtime: torch`` is built here,
and the result is one candidate that the shared stages choose, measure and publish like any other.

Accuracy budget with fallback: whether the budget holds is judged on selection rows (validation, else
calibration: ``choose.Selection``). When it is broken there and a quantization step is in the chain, that
step's per-layer sensitivity is *measured* on selection or calibration inputs (``techniques.sensitivity``),
then its most sensitive layers are kept float one more at a time (up to ``Budget.max_float_layers``) until
the budget holds on those rows. The eval rows give the reported metric only, computed once for the chosen
trial (``extra["fallback"]["eval_metric"]``).

Example:
    >>> sensitivity_inputs.__name__
    'sensitivity_inputs'
"""

from __future__ import annotations

from typing import Any, Callable

from modelpress.errors import UserInputError
from modelpress.optimize.chain import StepChain, run_steps
from modelpress.optimize.choose import Selection
from modelpress.optimize.measure import batch_of, compute_metric, count_params, n_samples, predict
from modelpress.optimize.plan import JobPlan
from modelpress.optimize.recipes import Budget, Recipe
from modelpress.optimize.runtimes.base import Exported
from modelpress.optimize.runtimes.torch_handle import TorchHandle
from modelpress.optimize.spec import TaskData
from modelpress.optimize.techniques.registry import StepContext, handler_for


def sensitivity_inputs(data: TaskData, budget: Budget) -> Any:
    """The rows a layer ranking is measured on: validation rows when the data has them, else calibration.

    The ranking is a choice (issue 20, item 11), so it never sees the eval rows whose metric is reported.
    """
    rows = data.val_inputs if data.val_inputs is not None and n_samples(data.val_inputs) > 0 else data.calib_inputs
    n = min(budget.sensitivity_samples, n_samples(rows))
    if n == 0:
        raise UserInputError("the accuracy-budget fallback measures layer sensitivity on validation or calibration "
                             "inputs, and this model's spec has none; set budget.max_float_layers: 0")
    b = batch_of(rows, 0, n)
    return b[0] if len(b) == 1 else b


def keep_sensitive_float(chain: StepChain, recipe: Recipe, ctx: StepContext, *, data: TaskData, choice: Selection,
                         choice_after: float, eval_bs: int,
                         log: Callable[[str], None]) -> tuple[StepChain, dict[str, Any]] | None:
    """Keep the most sensitive layers of the last quantization step float until the budget holds.

    Every decision (the ranking, and how many layers stay float) is made on selection rows (``choice``),
    never on the eval rows whose metric is reported: the caller computes that once, for the chosen trial.
    Returns the chosen chain and a JSON-able record, or None when no fallback applies.
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
    inputs = sensitivity_inputs(data, budget)
    reference = predict(model_in, inputs, batch_size=eval_bs)
    log(f"budget broken on the {choice.rows} rows ({choice.metric} {choice_after:.4f}); measuring per-layer "
        f"sensitivity of step {i + 1} ({len(out.meta['quantized_modules'])} layers, {budget.sensitivity_method})")
    report = handler.sensitivity(model_in, out, cfg, ctx, inputs=inputs, reference=reference,  # type: ignore[attr-defined]
                                 method=budget.sensitivity_method, batch_size=eval_bs)
    ranking = report.ranking()
    # Keeping every layer float is not quantization: leave at least one layer int8.
    limit = min(budget.max_float_layers, len(ranking) - 1)
    trials: list[dict[str, Any]] = [{"float_layers": [], "metric": choice_after, "within_budget": False}]
    best: tuple[float, StepChain] = (choice_after, chain)
    chosen = None
    base_keep = tuple(getattr(cfg, "keep_float", ()))
    for k in range(1, limit + 1):
        keep = base_keep + tuple(ranking[:k])
        trial_cfg = cfg.model_copy(update={"keep_float": keep})
        steps = recipe.steps[:i] + (trial_cfg,) + recipe.steps[i + 1 :]
        trial = run_steps(chain, steps, i, ctx, log=lambda m: None)
        metric_k = choice.score(trial.model)
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


def build_torch_recipe(plan: JobPlan, extra: dict[str, Any]) -> dict[str, Any]:
    """Run every step of the recipe on torch (with the budget's fallback); the one candidate, as a record.

    ``extra`` receives the job-level records of the choice made here (``budget_check``, ``fallback``).
    """
    spec, recipe, data, base, log = plan.spec, plan.recipe, plan.rows(), plan.baseline(), plan.log
    eval_bs = plan.eval_bs
    ctx = StepContext(spec=spec, data=data, engine=plan.engine, reference=plan.float_model, log=log,
                      progress=plan.progress, checkpoint_dir=plan.checkpoint_dir)
    chain = run_steps(StepChain([plan.float_model], []), recipe.steps, 0, ctx, log)
    out_after = predict(chain.model, data.eval_inputs, batch_size=eval_bs)
    metric_after = compute_metric(spec.metric, out_after, labels=data.eval_labels, reference=base.outputs)
    note = ""
    budget = recipe.budget
    within = True
    if budget is not None:
        # Whether to fall back, and how far, is decided on selection rows; the eval rows only ever give
        # the reported number, and the verdict on it.
        first_metric = metric_after
        choice = Selection.of(spec, data, plan.float_model, batch_size=eval_bs, confidence=budget.confidence)
        fb = None
        if choice is not None:
            choice_after = choice.score(chain.model)
            within = choice.allows(budget, choice_after)
            extra["budget_check"] = {**choice.describe(), "after": choice_after, "within_budget": within}
            if not within:
                fb = keep_sensitive_float(chain, recipe, ctx, data=data, choice=choice, choice_after=choice_after,
                                          eval_bs=eval_bs, log=log)
        if fb is not None:
            chain, extra["fallback"] = fb
            within = fb[1]["chosen_float_layers"] is not None
            out_after = predict(chain.model, data.eval_inputs, batch_size=eval_bs)
            metric_after = compute_metric(spec.metric, out_after, labels=data.eval_labels, reference=base.outputs)
            extra["fallback"]["eval_metric"] = metric_after
            trials = fb[1]["trials"]
            note = (f"; keeping up to {len(trials) - 1} of the most sensitive layer(s) float "
                    f"(chosen on {fb[1]['chosen_on']['rows']} rows) did not fit either (without fallback: "
                    f"{first_metric:.4f}; max_float_layers={budget.max_float_layers})")
    model, metas = chain.model, chain.metas
    if model.training:
        raise RuntimeError("the optimized model must be in eval mode before it is measured")
    handle = TorchHandle(model, [s.to_dict() for s in recipe.steps], metas,
                         {**plan.base_manifest, "recipe": recipe.to_dict()})
    metrics = {name: float(fn(out_after, base.outputs)) for name, fn in spec.extra.get("extra_metrics", {}).items()}
    return {"runtime": "torch", "versions": {}, "status": "built", **({"metrics": metrics} if metrics else {}),
            "suffix": ".mpz",
            "metric": metric_after, "within_budget_on_selection": within,
            "float_layers": sorted({n for m in metas for n in m.get("float_modules", [])}),
            "_exported": Exported(runtime="torch", handle=handle, input_names=[], quantized=True),
            "_outputs": out_after, "_reject_note": note, "_steps_meta": metas,
            "_last_float": chain.last_float(), "_params_after": count_params(model)}


__all__ = ["build_torch_recipe", "keep_sensitive_float", "sensitivity_inputs"]

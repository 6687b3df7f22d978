"""A recipe's level search: its torch steps once per level of its ``prune`` step, each level's candidates judged.

The levels are bisected: the middle one of those not yet ruled out is tried next (of two levels, the least cut
first). A level that keeps the budget rules out every level less cut than it, and the next, deeper level is cut
from its trained student (iterative pruning: each student inherits the training of the one before). A level
that misses it rules out every deeper level (a deeper cut would miss too), and the next, shallower level is cut
from the float model again, or from the most cut student that kept the budget. So with levels 0.19, 0.22 and
0.4, a job tries 0.22 first, then 0.4 from its student when 0.22 kept the budget, else 0.19: two levels' time
for any budget, where trying them in order would spend three to reach 0.4. The last level the search can try
(none is left after it) may train on into the job's spare time (``search.last_level_seconds``,
``_lengthen_training``). Each level's candidates are built
(by the caller's ``build``, one per runtime and variant) and judged on the selection rows. The search stops
when no level is left, or:

- before a level that would not fit in the job's soft time limit (``extra["search_unfinished"]``);
- a level deeper than one that kept the budget stops training once the budget's floor is out of its reach
  (its frontier row says ``abandoned``; no candidates are built for it, and it counts as a miss).

Every candidate carries its ``level``, and ``extra["frontier"]`` lists each level tried with its best
candidate on selection rows. With ``search.polish_seconds``, the level the job would choose trains on with the
time left and its candidates are built again (``_polish``).

Example:
    >>> from modelpress.optimize.recipes import Recipe
    >>> r = Recipe.from_dict({"name": "x", "steps": [{"type": "prune", "level": 0.5}, {"type": "quantize_static"}],
    ...                       "runtime": "auto", "search": {"levels": [0.5, 0.2]}})
    >>> sorted(r.search.levels)
    [0.2, 0.5]
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from modelpress.filemodes import make_private_dirs
from modelpress.optimize.chain import StepChain, run_steps
from modelpress.optimize.choose import Selection
from modelpress.optimize.plan import JobPlan
from modelpress.optimize.recipes import PruneConfig, StepConfig
from modelpress.optimize.techniques.registry import StepContext

#: Builds every runtime's candidates of one trained chain: ``(chain, ctx, steps, workdir, level)`` → the
#: candidate records and the first error met (``candidates.build_in_runtimes`` passes its own).
BuildLevel = Callable[[StepChain, StepContext, tuple[StepConfig, ...], Path, float],
                      tuple[list[dict[str, Any]], Exception | None]]

#: Polishing shorter than this is not started: the warm-up and the first validations would be most of it.
MIN_POLISH_SECONDS = 30.0


@dataclass
class _Level:
    """One search level as built: its chain and steps, its candidates, and what each part of it took (s)."""

    level: float
    chain: StepChain
    steps: tuple[StepConfig, ...]
    built: list[dict[str, Any]]
    ctx: StepContext
    steps_s: float
    candidates_s: float
    training_s: float
    #: The time bound of the level's own training steps (their ``max_seconds``; 0: none has one).
    bound_s: float = 0.0

    def finish_reserve(self) -> float:
        """What the job needs after its candidates are built: the choice (a runoff re-times the closest), the
        published artifact's reload, and the fresh timing and metric on the eval rows (31 s for MiniLM on 2
        cores, after 135 s of candidates)."""
        return max(60.0, 0.25 * self.candidates_s)

    def again(self, *, training: bool) -> float:
        """About what a level like this one takes (its steps, or only their set-up without ``training``, then its
        candidates), with a quarter to spare: one MiniLM job built the same candidates in 135 s, then 170 s.
        Training with a time bound takes at most that bound, so the bound is counted as it is, not spared for:
        with a quarter on top of MiniLM's 420 s of distillation, one job found 1,035 s needed for its second
        level and 1,028 s left, and did not try it; it would have ended 150 s before the limit.

        Example:
            >>> lv = _Level(0.2, None, (), [], None, steps_s=440.0, candidates_s=280.0, training_s=420.0,
            ...             bound_s=420.0)
            >>> lv.again(training=False), lv.again(training=True)
            (375.0, 795.0)
        """
        setup = max(0.0, self.steps_s - self.training_s)
        if not training:
            return 1.25 * (self.candidates_s + setup)
        if self.bound_s > 0:
            return 1.25 * (self.candidates_s + setup) + max(self.bound_s, self.training_s)
        return 1.25 * (self.candidates_s + setup + self.training_s)


def search_levels(plan: JobPlan, torch_steps: tuple[StepConfig, ...], sel: Selection, build: BuildLevel,
                  extra: dict[str, Any], workdir: Path) -> tuple[list[dict[str, Any]], Exception | None]:
    """Every level's candidates (see the module docstring), and the first error met building one.

    ``extra`` receives ``frontier`` (and ``search_unfinished`` when the job's time ran short).
    """
    recipe, log = plan.recipe, plan.log
    assert recipe.search is not None
    budget = recipe.budget
    candidates: list[dict[str, Any]] = []
    frontier: list[dict[str, Any]] = []
    tried: dict[float, _Level] = {}
    first_error: Exception | None = None
    levels = sorted(recipe.search.levels)
    # The levels not yet ruled out are levels[lo:hi + 1]; each round tries the middle one (bisection).
    lo, hi = 0, len(levels) - 1
    # The most cut level that kept the budget: a deeper level starts from its trained student.
    previous: _Level | None = None
    last: _Level | None = None  # the level tried last: what a level costs, for the time check
    while lo <= hi:
        idx = (lo + hi) // 2
        level = levels[idx]
        if last is not None and (why := _no_time_for(plan, last)):
            log(f"search: level {level} not tried: {why}")
            extra["search_unfinished"] = {"level": level, "reason": why}
            break
        t_level = time.monotonic()
        cut_from = previous.level if previous is not None else 0.0
        steps = tuple(s.model_copy(update={"level": level, "from_level": cut_from})
                      if isinstance(s, PruneConfig) else s for s in torch_steps)
        log(f"search: level {level}" + (f", from the level-{cut_from} student" if previous is not None else ""))
        more = 0.0
        if lo == hi and last is not None and recipe.search.last_level_seconds > 0:  # no level is left after it
            steps, more = _lengthen_training(plan, steps, last, recipe.search.last_level_seconds)
        # Each level trains its own student: its checkpoints live apart from the other levels'.
        ckpt = plan.checkpoint_dir / f"level-{level}"
        # A deeper level than one that kept the budget may stop training once the budget is out of its reach
        # (missing it rules out every deeper level either way, and the time is better spent elsewhere).
        target = (sel.before - budget.allowed_drop(sel.before)
                  if previous is not None and budget is not None and sel.rows == "validation" else None)
        ctx = StepContext(spec=plan.spec, data=plan.rows(), engine=plan.engine, reference=plan.float_model, log=log,
                          progress=plan.progress, checkpoint_dir=ckpt, target=target)
        chain = StepChain([plan.float_model], [])
        start = 0
        if previous is not None:  # this level's steps run after the previous level's, on its output
            chain = StepChain(previous.chain.inputs + [previous.chain.model], previous.chain.outputs)
            steps, start = previous.steps + steps, len(previous.steps)
        if steps:
            make_private_dirs(ckpt)
            chain = run_steps(chain, steps, start, ctx, log)
        steps_s = time.monotonic() - t_level
        if gave_up := [m for m in chain.metas[start:] if m.get("stopped_by") == "out_of_reach"]:
            g = gave_up[-1]
            why = (f"training stopped at {g['seconds']:.0f} s: validation {g['validation_best']:.4f} would not "
                   f"reach {target:.4f}")
            log(f"search: level {level} not built: {why}")
            frontier.append({**_frontier_row(level, [], chain, more), "abandoned": why})
            hi = idx - 1
            continue
        t_cand = time.monotonic()
        built, error = build(chain, ctx, steps, workdir / f"level-{level}", level)
        first_error = first_error or error
        candidates += built
        frontier.append(_frontier_row(level, built, chain, more))
        tried[level] = last = _Level(level, chain, steps, built, ctx, steps_s, time.monotonic() - t_cand,
                                     _training_seconds(chain.metas[start:]), _time_bound(steps[start:]))
        if frontier[-1]["within_budget_on_selection"]:
            previous, lo = last, idx + 1
        else:
            # Every deeper level would miss too; a shallower one is cut from the float model again, or from the
            # most cut student that kept the budget.
            log(f"search: level {level} misses the budget on {sel.rows} rows; deeper cuts would miss too")
            hi = idx - 1
    # Least cut first, whatever the order they were tried in.
    frontier.sort(key=lambda f: f["level"])
    if recipe.search.polish_seconds > 0 and frontier:
        polished, error = _polish(plan, recipe.search.polish_seconds, tried, frontier, sel, build, workdir)
        candidates += polished
        first_error = first_error or error
    extra["frontier"] = frontier
    return candidates, first_error


def _training_seconds(metas: list[dict[str, Any]]) -> float:
    """Seconds of a chain's training steps spent training (the rest of their time is set-up, pruning, ...)."""
    return sum(float(m.get("seconds") or 0.0) for m in metas if "steps_run" in m)


def _time_bound(steps: tuple[StepConfig, ...]) -> float:
    """The seconds that bound ``steps``' training (the sum of their ``max_seconds``; 0: none has one)."""
    return sum(float(getattr(s, "max_seconds")) for s in steps
               if isinstance(getattr(s, "max_seconds", None), (int, float)))


def _no_time_for(plan: JobPlan, previous: _Level) -> str | None:
    """Why the next level cannot fit before the job's soft time limit (None: it can, or there is no limit).

    A level costs about what the previous one did (its steps and its candidates), and the job still has to
    choose and measure after it.
    """
    left = plan.seconds_left()
    need = previous.again(training=True) + previous.finish_reserve()
    if left is None or left >= need:
        return None
    return f"about {need:.0f} s needed and {max(left, 0):.0f} s left before the job's soft time limit"


def _lengthen_training(plan: JobPlan, steps: tuple[StepConfig, ...], last: _Level,
                       most: float) -> tuple[tuple[StepConfig, ...], float]:
    """``steps`` with their last time-bounded training step given up to ``most`` seconds more, from the time the
    job can spare (``search.last_level_seconds``), and the seconds given (0: none, or too few to be worth it).

    Kept back: what the level before took for everything but training (set-up and candidates, with a quarter to
    spare), this level's own training bound, and the job's last measurements.
    """
    at = [i for i, s in enumerate(steps) if _time_bound((s,)) > 0]
    if not at:
        return steps, 0.0
    step = steps[at[-1]]
    bound = float(getattr(step, "max_seconds"))
    left = plan.seconds_left()
    spare = most if left is None else min(most, left - last.again(training=False) - bound - last.finish_reserve())
    spare = float(math.floor(spare))  # whole seconds: the bound is recorded with the artifact
    if spare < MIN_POLISH_SECONDS:  # a longer schedule for a few seconds more is not worth a different run
        plan.log(f"search: the last level trains as its step says: {max(spare, 0.0):.0f} s to spare")
        return steps, 0.0
    longer = step.model_copy(update={"max_seconds": bound + spare})
    plan.log(f"search: the last level's {step.type} may train {spare:.0f} s more ({bound + spare:.0f} s): "
             "no level is left after it")
    return steps[:at[-1]] + (longer,) + steps[at[-1] + 1:], spare


def _frontier_row(level: float, built: list[dict[str, Any]], chain: StepChain, more: float = 0.0) -> dict[str, Any]:
    ok = [c for c in built if c.get("status") == "built"]
    best = max(ok, key=lambda c: c["selection_metric"], default=None)
    return {"level": level, "candidates_built": len(ok),
            **({"extra_training_seconds": round(more, 1)} if more else {}),
            "within_budget_on_selection": any(c["within_budget_on_selection"] for c in ok),
            "best_selection_metric": best["selection_metric"] if best else None,
            "best_runtime": best["runtime"] if best else None,
            "latency": best["latency"] if best else None,
            "bytes": best["bytes"] if best else None,
            "steps_meta": _step_summary(chain.metas)}


def _polish(plan: JobPlan, seconds: float, tried: dict[float, _Level], frontier: list[dict[str, Any]],
            sel: Selection, build: BuildLevel, workdir: Path) -> tuple[list[dict[str, Any]], Exception | None]:
    """Train the level the job would choose for up to ``seconds`` more, then build its candidates again.

    The level is the most cut one that kept the budget on the selection rows, else the least cut (the one
    closest to keeping it). Its last training step runs again from its trained student (``extended``), for
    ``seconds`` or what the job's time allows after keeping back what rebuilding the candidates, the
    training step's set-up and the job's last measurements took or need. Of the level's two rounds of
    candidates, the one whose best scores higher on the selection rows stands; the other's are recorded as
    ``superseded`` (never chosen). The level's frontier row says what was done (``polish``).
    """
    keeping = [f["level"] for f in frontier if f["within_budget_on_selection"]]
    level = max(keeping) if keeping else frontier[0]["level"]
    row = next(f for f in frontier if f["level"] == level)
    lv = tried[level]
    trainable = [s for s in lv.steps if callable(getattr(s, "extended", None))]
    if not trainable:
        row["polish"] = {"skipped": "the level has no training step to continue"}
        return [], None
    reserve = lv.again(training=False) + lv.finish_reserve()
    left = plan.seconds_left()
    budget = seconds if left is None else min(seconds, left - reserve)
    if budget < MIN_POLISH_SECONDS:
        row["polish"] = {"skipped": f"{max(left or 0.0, 0.0):.0f} s left before the job's soft time limit, "
                                    f"{reserve:.0f} s of it kept back"}
        plan.log(f"search: level {level} not polished: {row['polish']['skipped']}")
        return [], None
    plan.log(f"search: polishing level {level}: {budget:.0f} s more of {trainable[-1].type}")
    ext = trainable[-1].extended(budget)  # type: ignore[attr-defined]
    steps = lv.steps + (ext,)
    # No target: the chosen level keeps the budget already, or is the one to bring closest to it.
    ctx = replace(lv.ctx, target=None)
    chain = run_steps(StepChain(lv.chain.inputs + [lv.chain.model], lv.chain.outputs), steps, len(lv.steps),
                      ctx, plan.log)
    built, error = build(chain, ctx, steps, workdir / f"level-{level}-polished", level)
    for c in built:
        c["polished"] = True
    after = _frontier_row(level, built, chain)
    before = row["best_selection_metric"]
    kept = after["best_selection_metric"] is not None and (before is None or after["best_selection_metric"] > before)
    loser = lv.built if kept else built
    for c in loser:
        if c.get("status") == "built":
            c["status"] = "superseded"
            c["reason"] = ("the level's " + ("polished" if kept else "first") + " round scored better on "
                           f"the {sel.rows} rows")
    polish = {"seconds": round(budget, 1), "best_selection_metric_before": before,
              "best_selection_metric_after": after["best_selection_metric"], "kept": kept}
    if kept:
        row.update(after)
    row["polish"] = polish
    plan.log(f"search: level {level} polished: best {sel.rows} metric {before} → {after['best_selection_metric']}"
             f" ({'kept' if kept else 'the first round stands'})")
    return built, error


def _step_summary(metas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The figures of each torch step a frontier row shows (structure and history left to the artifact)."""
    keep = ("level", "params_before", "params_after", "layers_after", "heads_per_layer_after", "ffn_per_layer_after",
            "steps_run", "stopped_by", "max_seconds", "seconds", "validation_before", "validation_best", "peak_rss_mb",
            "flops_ratio")
    out = []
    for m in metas:
        flat = {**m, **(m.get("delegate_meta") or {})}
        out.append({k: flat[k] for k in keep if k in flat})
    return out


__all__ = ["MIN_POLISH_SECONDS", "BuildLevel", "search_levels"]

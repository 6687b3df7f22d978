"""Stage 3 of a job: choose among the built candidates on selection rows, never on the eval rows.

``Selection`` holds the rows every choice is made on: validation rows when the model's data has them
(``TaskData.val_inputs``, optionally ``val_labels``), else the calibration inputs judged by fidelity to
the float model. Accuracy without labels becomes its conservative proxy, top-1 agreement with the float
model (accuracy can drop by at most the disagreement rate), so a budget met there is one accuracy keeps.

``choose`` keeps, among candidates that keep the budget on those rows, the best at the recipe's objective
(``latency_b1``, ``latency_bN`` = largest measured batch, or ``size``). Near ties at a latency objective are
first timed again side by side (``runoff``), because candidates timed minutes apart differ by host drift.

Example:
    >>> a = {"status": "built", "within_budget_on_selection": True, "bytes": 9, "selection_metric": .9,
    ...      "latency": [{"batch_size": 1, "median_ms": 2.0}, {"batch_size": 64, "median_ms": 9.0}]}
    >>> choose([a], "size") is a
    True
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from modelpress.errors import UserInputError
from modelpress.optimize.measure import (batch_of, compute_metric, host_timing_lock, interleaved_latency, n_samples,
                                        predict)
from modelpress.optimize.outputs import GOLD_START, OutputsMetric
from modelpress.optimize.recipes import Budget
from modelpress.optimize.runtimes.registry import get_runtime
from modelpress.optimize.spec import ModelSpec, TaskData

#: Candidates keeping the budget whose objective latency is within this fraction of the best one are timed
#: again side by side (``runoff``) before one is chosen; env override.
RUNOFF_MARGIN = float(os.environ.get("MODELPRESS_RUNOFF_MARGIN", "0.10"))
#: Bootstrap resamples of the selection rows behind a budget's ``confidence`` bound.
BOOTSTRAP_RESAMPLES = 1000
#: Rounds of the run-off; each times every contender for ``ceil(runs / RUNOFF_ROUNDS)`` calls.
RUNOFF_ROUNDS = 5
#: At most this many contenders (the closest to the best) go into a run-off.
RUNOFF_MAX = 3


class NoCandidateError(UserInputError):
    """``runtime: auto`` could build no candidate; the message lists each runtime's reason."""


def unbatch(b: tuple[torch.Tensor, ...]) -> Any:
    """One batch as a model takes it: a tensor for one input, else the tuple."""
    return b[0] if len(b) == 1 else b


class Selection:
    """Rows that decisions are made on (never the eval rows), and how to score a model on them.

    Build it with ``Selection.of``; ``rows`` says which rows they are ("validation" or "calibration"),
    ``before`` is the float model's score there.
    """

    def __init__(self, rows: str, inputs: Any, labels: torch.Tensor | None, metric: Any,
                 reference: torch.Tensor, batch_size: int, confidence: float | None = None) -> None:
        self.rows, self.inputs, self.labels, self.metric = rows, inputs, labels, metric
        self.reference, self.batch_size, self.confidence = reference, batch_size, confidence
        self.before = self._metric(reference)
        self._resamples: list[tuple[torch.Tensor, float]] = []
        if confidence is not None:
            # Fixed resamples (seeded), so that two candidates are judged on the same draws.
            n = int(reference.shape[0])
            g = torch.Generator().manual_seed(0)
            for _ in range(BOOTSTRAP_RESAMPLES):
                idx = torch.randint(0, n, (n,), generator=g)
                self._resamples.append((idx, self._metric(reference, idx)))

    @classmethod
    def of(cls, spec: ModelSpec, data: TaskData, float_fn: Callable[..., torch.Tensor], *, batch_size: int,
           max_calibration_rows: int | None = None, confidence: float | None = None) -> "Selection | None":
        """The selection rows of ``data``, or None when it has neither validation nor calibration rows.

        Calibration rows are cut to the first ``max_calibration_rows`` when given (a runtime scores every
        candidate, fallback trial and tuning on them). ``confidence``: scores are lower bounds (the budget's).
        """
        if data.val_inputs is not None and n_samples(data.val_inputs) > 0:
            rows, inputs, labels = "validation", data.val_inputs, data.val_labels
        else:
            rows, inputs, labels = "calibration", data.calib_inputs, None
            n = n_samples(inputs)
            if max_calibration_rows is not None and n > 0:
                inputs = unbatch(batch_of(inputs, 0, min(n, max_calibration_rows)))
        if n_samples(inputs) == 0:
            return None
        metric: Any
        if isinstance(spec.metric, OutputsMetric):  # several outputs: labelled ones by agreement where rows have none
            metric = spec.metric if labels is not None else spec.metric.without_labels()
        elif spec.metric == "accuracy" and labels is not None:
            metric = "accuracy"
        elif spec.metric in ("token_accuracy", "token_agreement"):
            # A tagger's rows carry its word positions as labels: kept, so that only words are compared.
            tagged = labels is not None and bool((labels >= 0).any())
            metric = "token_accuracy" if spec.metric == "token_accuracy" and tagged else "token_agreement"
        elif spec.metric in ("span_f1", "span_agreement"):
            # Question answering: the rows' context marks are kept (answers come from the context only).
            answered = labels is not None and bool(((labels & GOLD_START) > 0).any())
            metric = "span_f1" if spec.metric == "span_f1" and answered else "span_agreement"
        else:
            metric, labels = ("cosine" if spec.metric == "cosine" else "top1_agreement"), None
        reference = predict(float_fn, inputs, batch_size=batch_size)
        return cls(rows, inputs, labels, metric, reference, batch_size, confidence)

    def _metric(self, out: torch.Tensor, idx: torch.Tensor | None = None) -> float:
        if idx is None:
            return compute_metric(self.metric, out, labels=self.labels, reference=self.reference)
        return compute_metric(self.metric, out[idx], labels=None if self.labels is None else self.labels[idx],
                              reference=self.reference[idx])

    def score_outputs(self, out: torch.Tensor) -> float:
        """The metric of outputs ``out`` on these rows: the mean, or with a ``confidence`` its lower bound.

        Example:
            >>> ref = torch.eye(4)
            >>> s = Selection("validation", None, None, "cosine", ref, 32, confidence=0.9)
            >>> s.score_outputs(ref)
            1.0
            >>> out = ref.clone(); out[0] = torch.tensor([1.0, 1.0, 0.0, 0.0])
            >>> mean = Selection("validation", None, None, "cosine", ref, 32).score_outputs(out)
            >>> round(mean, 4), round(s.score_outputs(out), 4)
            (0.9268, 0.8536)
        """
        if self.confidence is None:
            return self._metric(out)
        drops = torch.tensor([before - self._metric(out, idx) for idx, before in self._resamples], dtype=torch.float64)
        return self.before - float(torch.quantile(drops, self.confidence))

    def score(self, fn: Callable[..., torch.Tensor]) -> float:
        """The metric of ``fn`` (a model or a loaded artifact) on these rows."""
        return self.score_outputs(predict(fn, self.inputs, batch_size=self.batch_size))

    def allows(self, budget: Budget | None, after: float) -> bool:
        return budget is None or budget.allows(before=self.before, after=after)

    def describe(self) -> dict[str, Any]:
        d = {"rows": self.rows, "samples": n_samples(self.inputs), "metric": str(self.metric), "before": self.before}
        if self.confidence is not None:
            d["lower_bound"] = {"confidence": self.confidence, "bootstrap_resamples": BOOTSTRAP_RESAMPLES}
        return d


def variant_label(name: str, variant: dict[str, Any] | None) -> str:
    """A candidate's name in logs and run-off records: the runtime, then its variant's settings.

    Example:
        >>> variant_label("onnxruntime", {"per_channel": False})
        'onnxruntime (per_channel=False)'
    """
    return name + ("" if not variant else " (" + ", ".join(f"{k}={v}" for k, v in sorted(variant.items())) + ")")


def objective_value(rec: dict[str, Any], objective: str) -> float:
    """What the objective minimises for one candidate: bytes, or the median at batch 1 or the largest batch."""
    if objective == "size":
        return float(rec["bytes"])
    lats = sorted(rec["latency"], key=lambda s: s["batch_size"])
    pick = lats[0] if objective == "latency_b1" else lats[-1]
    return float(pick["median_ms"])


def runoff(job: Any, candidates: Sequence[dict[str, Any]], objective: str,
           margin: float | None = None) -> dict[str, Any] | None:
    """Time the candidates that are near-tied at a latency objective again, interleaved, before choosing.

    Each candidate was timed on its own, minutes apart from the others; between two artifacts a few per cent
    apart (the same int8 graph in two runtimes, per-tensor vs per-channel weights) host drift decides which
    one looks faster. So the ones keeping the budget whose objective latency is within ``margin`` of the best
    are reloaded from their files and timed in alternating rounds (``measure.interleaved_latency``) under
    the host timing lock, with as many runs in all as the first timing. Their entry for the objective's
    batch is replaced by the pooled one (``"interleaved": true``; the first kept as ``latency_first``), so
    ``choose`` uses the sturdier number. Candidates of different search levels (``level``) were timed a
    level's training apart, where drift is not a few per cent: MiniLM's level-0.22 OpenVINO candidate timed
    79 ms at batch 32 in one job and 122 to 143 ms in three others, and that job kept it over the level-0.4
    candidate (104 ms). So the fastest of each level that keeps the budget joins the run-off whatever the
    margin. ``job`` gives ``load(runtime, path)``, ``runs``, ``warmup``,
    ``threads``, ``lock_dir``, ``timings``, ``log`` and ``spec``. The run-off's record, or None.
    """
    margin = RUNOFF_MARGIN if margin is None else margin
    if objective == "size" or margin <= 0:
        return None
    keeping = [c for c in candidates if c.get("status") == "built" and c["within_budget_on_selection"]]
    if len(keeping) < 2:
        return None
    best = min(objective_value(c, objective) for c in keeping)
    near = sorted((c for c in keeping if objective_value(c, objective) <= best * (1 + margin)),
                  key=lambda c: objective_value(c, objective))[:RUNOFF_MAX]
    level_best: dict[Any, dict[str, Any]] = {}
    for c in sorted(keeping, key=lambda c: objective_value(c, objective)):
        level_best.setdefault(c.get("level"), c)
    if len(level_best) > 1:
        near += [c for c in level_best.values() if not any(c is n for n in near)]
    if len(near) < 2:
        return None
    lats = sorted(near[0]["latency"], key=lambda s: s["batch_size"])
    batch = int((lats[0] if objective == "latency_b1" else lats[-1])["batch_size"])
    labels = [f"{i}: " + variant_label(c["runtime"], c.get("variant")) for i, c in enumerate(near)]
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
        return min(keeping, key=lambda c: (objective_value(c, objective), c["bytes"]))
    return max(built, key=lambda c: c["selection_metric"])


__all__ = ["NoCandidateError", "RUNOFF_MARGIN", "RUNOFF_MAX", "RUNOFF_ROUNDS", "Selection", "choose",
           "objective_value", "runoff", "unbatch", "variant_label"]

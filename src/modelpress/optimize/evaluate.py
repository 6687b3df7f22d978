"""Figures on the eval rows, shared by every runtime: the float reference and the metric at batch 1.

These are the numbers a job reports, so they are computed only once every choice is made (the float
reference is the exception: it is what every result is compared with). ``timing_record`` summarises the
host-timing-lock phases a job went through.

Example:
    >>> timing_record([{"waited_s": 0.5, "load_avg_1m_start": 0.1, "load_avg_1m_end": 0.3}])["lock_wait_s"]
    0.5
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from modelpress.errors import ModelLoadError
from modelpress.optimize.measure import batch_of, compute_metric, n_samples, predict
from modelpress.optimize.outputs import OutputsMetric, pack
from modelpress.optimize.spec import ModelSpec, TaskData

# Batch-1 evaluation is one forward per row: bounded in rows and in time, and the row count recorded.
B1_MAX_ROWS = 512
B1_MAX_SECONDS = 30.0


def eval_batch_size(spec: ModelSpec) -> int:
    """The batch the eval rows are predicted in.

    Dynamic int8 quantizes activations per *batch*: a spec may name the batch size the model is served
    with, so that the measured metric is the deployed one.
    """
    return int(spec.extra.get("eval_batch_size", 256))


def float_reference(float_model: nn.Module, spec: ModelSpec, data: TaskData, eval_bs: int) -> tuple[torch.Tensor, float]:
    """The float model's outputs on the eval rows and its metric: what every result is compared with."""
    if float_model.training:
        raise RuntimeError("the float model must be in eval mode before it is measured")
    ref_out = predict(float_model, data.eval_inputs, batch_size=eval_bs)
    try:
        metric_before = compute_metric(spec.metric, ref_out, labels=data.eval_labels, reference=ref_out)
    except RuntimeError as e:
        raise ModelLoadError(f"the model's outputs do not fit its labels: {e}") from None
    return ref_out, metric_before


@torch.inference_mode()
def metric_at_batch1(model: Any, data: TaskData, metric: str | OutputsMetric, ref_out: torch.Tensor, *,
                     max_rows: int = B1_MAX_ROWS, max_seconds: float = B1_MAX_SECONDS) -> dict[str, Any]:
    """The metric with the model called one row at a time (as a service calls it), on the first rows.

    ``before`` is the float model's metric on the same rows, so the two compare like with like.
    """
    n = min(max_rows, n_samples(data.eval_inputs))
    outs = []
    t0 = time.monotonic()
    for r in range(n):
        outs.append(pack(model(*batch_of(data.eval_inputs, r, r + 1))))
        if time.monotonic() - t0 > max_seconds:
            break
    k = len(outs)
    out = torch.cat(outs)
    labels = data.eval_labels[:k] if data.eval_labels is not None else None
    ref = ref_out[:k]
    return {"after": compute_metric(metric, out, labels=labels, reference=ref),  # type: ignore[arg-type]
            "before": compute_metric(metric, ref, labels=labels, reference=ref), "rows": k}  # type: ignore[arg-type]


def timing_record(timings: list[dict[str, Any]]) -> dict[str, Any]:
    """Every timing phase of a job, the time it waited for the host lock and the highest load seen."""
    loads = [v for t in timings for v in (t["load_avg_1m_start"], t["load_avg_1m_end"]) if v is not None]
    return {"phases": timings, "lock_wait_s": sum(t["waited_s"] for t in timings),
            "load_avg_1m": max(loads) if loads else None}


__all__ = ["B1_MAX_ROWS", "B1_MAX_SECONDS", "eval_batch_size", "float_reference", "metric_at_batch1",
           "timing_record"]

"""Text renderers: a plain-text table for a terminal, CSV (one line per job) and JSON (every field).

Example:
    >>> from modelpress.report.rows import rows_from_jobs
    >>> rows = rows_from_jobs([{"id": "j1", "model_name": "mlp", "recipe_name": "r", "backend": "fbgemm",
    ...                         "status": "failed", "error": "boom"}])
    >>> render_csv(rows).splitlines()[0].split(",")[:3]
    ['job_id', 'model', 'model_label']
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Sequence

from modelpress.report.cells import backend_label, fmt_bytes, fmt_latency, fmt_metric, fmt_ratio
from modelpress.report.rows import EMULATED_NOTE, ResultRow, all_batch_sizes

FORMATS = ("table", "json", "csv")


def _status(r: ResultRow) -> str:
    return r.status + (" (reused)" if r.reused else "")


def render_json(rows: Sequence[ResultRow]) -> str:
    """Every row with every field and the derived ratios, as a JSON list."""
    return json.dumps([r.to_dict() for r in rows], indent=1, sort_keys=True)


def render_csv(rows: Sequence[ResultRow]) -> str:
    """One line per job; latency columns per measured batch size (``b64_ms_before``...)."""
    batches = all_batch_sizes(rows)
    head = ["job_id", "model", "model_label", "recipe", "backend", "status", "reused", "reused_from",
            "size_before_bytes", "size_after_bytes", "size_ratio", "metric_name", "metric_before", "metric_after"]
    head += [h for b in batches for h in (f"b{b}_ms_before", f"b{b}_ms_after", f"b{b}_speedup")]
    head += ["stayed_float", "budget_max_drop", "regression", "error", "artifact_uri", "worker_arch", "emulated",
             "runtime", "runner_up", "runtime_precision"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for r in rows:
        line: list[Any] = [r.job_id, r.model, r.model_label, r.recipe, r.backend, r.status, r.reused, r.reused_from,
                           r.size_before_bytes, r.size_after_bytes, r.size_ratio, r.metric_name, r.metric_before,
                           r.metric_after]
        for b in batches:
            line += [r.latency_before_ms.get(b), r.latency_after_ms.get(b), r.speedup(b)]
        line += [r.stayed_float(), (r.budget or {}).get("max_drop"), r.regression_summary(), r.error, r.artifact_uri,
                 r.worker_arch, r.emulated, r.runtime or "torch", r.runner_up, r.runtime_precision]
        w.writerow(["" if v is None else v for v in line])
    return buf.getvalue()


def render_table(rows: Sequence[ResultRow]) -> str:
    """A plain-text table for a terminal, then the reasons and errors as notes."""
    batches = all_batch_sizes(rows)
    head = ["job", "model", "recipe", "backend", "status", "bytes before", "bytes after", "smaller"]
    head += [h for b in batches for h in (f"b{b} ms before", f"b{b} ms after", f"b{b} faster")]
    head += ["metric", "before", "after", "stayed float", "runtime"]
    body = []
    for r in rows:
        line = [(r.job_id or "-")[:8], r.model_label, r.recipe, backend_label(r), _status(r),
                fmt_bytes(r.size_before_bytes), fmt_bytes(r.size_after_bytes), fmt_ratio(r.size_ratio)]
        for b in batches:
            line += [fmt_latency(r, r.latency_before_ms.get(b)), fmt_latency(r, r.latency_after_ms.get(b)),
                     "emulated" if r.emulated else fmt_ratio(r.speedup(b))]
        line += [r.metric_name or "-", fmt_metric(r.metric_before), fmt_metric(r.metric_after), r.stayed_float(),
                 r.runtime or "torch"]
        body.append(line)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    out = ["  ".join(str(x).ljust(w) for x, w in zip(head, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in body]
    notes = [f"  {(r.job_id or r.recipe)[:8]}: {r.error}" for r in rows if r.error]
    notes += [f"  {(r.job_id or r.recipe)[:8]}: REGRESSION {r.regression_summary()}" for r in rows if r.regression]
    if any(r.emulated for r in rows):
        notes.append(f"  * {EMULATED_NOTE}")
    notes += [f"  {(r.job_id or r.recipe)[:8]}: runner-up {r.runner_up}" for r in rows if r.runner_up]
    if notes:
        out += ["", "notes:"] + notes
    return "\n".join(out) + "\n"


__all__ = ["FORMATS", "render_csv", "render_json", "render_table"]

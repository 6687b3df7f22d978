"""Batch reports: the measured results of many jobs as one self-contained HTML page, JSON, CSV or a table.

Rows come from job rows (``rows_from_jobs``) or from an in-process zoo run (``rows_from_zoo``). The
HTML page has no external resource at all — inline CSS, inline SVG drawn here, no script, no font, no
CDN — so it can be mailed, archived as a CI artifact or opened offline. It shows:

- the best artifact per model and backend: the *smallest* artifact among the jobs that kept their
  accuracy budget (status ``succeeded``), ties broken by the faster latency at the largest batch;
- regression flags the nightly run wrote into a job's ``regression`` column;
- per model, a size-vs-metric plot (float baseline, every recipe × backend; rejected results hollow)
  and latency bars before/after at every batch size the worker measured;
- the full results table: sizes in bytes and their ratio, latency before/after per batch size,
  metric before/after, what stayed float, status, reason or error.

No torch here: the report reads numbers, it does not measure them.

What lives here: ``rows`` (``ResultRow``, reading job rows and zoo runs, best per model, status counts),
``cells`` (cell formatting shared by the text table and the page), ``text`` (table, CSV, JSON), ``charts``
(inline SVG plots) and ``page`` (the HTML page). The names below are the package's public interface:
callers import them from ``modelpress.report``, not from its modules.

What it may import: the standard library only, and its own modules in one direction: ``rows`` imports
none of them; ``cells`` and ``charts`` import ``rows``; ``text`` imports ``rows`` and ``cells``; ``page``
imports the other four. Never torch, Celery, the job database or ``modelpress.optimize``: callers hand
it plain rows (``Job.to_dict()``) or zoo ``ReportRow`` objects.

Example:
    >>> rows = rows_from_jobs([{"id": "a" * 32, "model_name": "mlp", "recipe_name": "dynamic-int8",
    ...                         "backend": "fbgemm", "status": "succeeded", "size_before_bytes": 400,
    ...                         "size_after_bytes": 100, "metric_name": "accuracy", "metric_before": 0.99,
    ...                         "metric_after": 0.98}])
    >>> rows[0].size_ratio
    4.0
    >>> "<svg" in render_html(rows, title="demo")
    True
"""

from modelpress.report.charts import BACKEND_COLORS, EXTRA_COLORS, latency_svg, size_metric_svg
from modelpress.report.page import render_html
from modelpress.report.rows import (
    EMULATED_NOTE,
    QUANT_STEPS,
    ResultRow,
    all_batch_sizes,
    best_per_model,
    rows_from_jobs,
    rows_from_zoo,
    status_counts,
)
from modelpress.report.text import FORMATS, render_csv, render_json, render_table

__all__ = ["BACKEND_COLORS", "EMULATED_NOTE", "EXTRA_COLORS", "FORMATS", "QUANT_STEPS", "ResultRow",
           "all_batch_sizes", "best_per_model", "latency_svg", "render_csv", "render_html", "render_json",
           "render_table", "rows_from_jobs", "rows_from_zoo", "size_metric_svg", "status_counts"]

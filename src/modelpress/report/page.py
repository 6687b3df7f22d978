"""The HTML report: one self-contained page (inline CSS and SVG, no script, no external resource).

Example:
    >>> page = render_html([], title="empty batch")
    >>> "No jobs" in page and "<script" not in page
    True
"""

from __future__ import annotations

from datetime import datetime, timezone
from html import escape
from typing import Sequence

from modelpress.report.cells import (
    backend_label,
    fmt_budget,
    fmt_bytes,
    fmt_delta,
    fmt_latency,
    fmt_metric,
    fmt_ratio,
)
from modelpress.report.charts import latency_svg, size_metric_svg
from modelpress.report.rows import EMULATED_NOTE, ResultRow, all_batch_sizes, best_per_model, status_counts

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.muted{color:#666}
table{border-collapse:collapse;margin:6px 0 12px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d9d9de;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f6;font-weight:600}td.num{text-align:right;white-space:nowrap}
tr.failed td{background:#fdecea}tr.rejected td{background:#fff7e0}tr.regressed td.reg{background:#fde0dc}
.badge{display:inline-block;border-radius:9px;padding:0 7px;font-size:12px;margin-right:4px}
.b-succeeded{background:#dff3e4}.b-rejected{background:#ffefc2}.b-failed{background:#f9d3cf}
.b-queued,.b-running{background:#e4e9f7}.b-emulated{background:#e9dcf7}.b-reused{background:#ececec}.b-regression{background:#f7c1ba}
.plots{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
svg.plot text{font:11px system-ui,sans-serif;fill:#333}svg.plot .axis{font-weight:600}
svg.plot .frame{fill:none;stroke:#bbb}svg.plot .grid{stroke:#eee}svg.plot .float{fill:#222}
svg.plot .before{fill:#b9b9bf}svg.plot .label{fill:#555;font-size:10px}
code{font-size:12px;word-break:break-all}
"""


def _cell(v: str, cls: str = "") -> str:
    return f'<td class="{cls}">{escape(v)}</td>' if cls else f"<td>{escape(v)}</td>"


def _badges(r: ResultRow) -> str:
    out = f'<span class="badge b-{escape(r.status)}">{escape(r.status)}</span>'
    if r.reused:
        out += f'<span class="badge b-reused" title="result of job {escape(r.reused_from or "")}">reused</span>'
    if r.regression:
        out += '<span class="badge b-regression">regression</span>'
    if r.emulated:
        out += (f'<span class="badge b-emulated" title="{escape(EMULATED_NOTE)}">emulated '
                f'{escape(r.worker_arch or "")} ({escape(r.emulated)})</span>')
    return out


def render_html(rows: Sequence[ResultRow], *, title: str, subtitle: str = "") -> str:
    """The whole report as one HTML page with inline CSS and SVG (no script, no external resource).

    Example:
        >>> page = render_html([], title="empty batch")
        >>> "No jobs" in page and "<script" not in page
        True
    """
    counts = status_counts(rows)
    batches = all_batch_sizes(rows)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    summary = " ".join(f'<span class="badge b-{escape(k)}">{escape(k)} {v}</span>'
                       for k, v in sorted(counts.items()) if v)
    h = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width, initial-scale=1">',
         f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
         f"<h1>{escape(title)}</h1>",
         f'<p class="muted">{escape(subtitle)}{" · " if subtitle else ""}{len(rows)} jobs · generated {generated}</p>',
         f"<p>{summary}</p>"]
    if not rows:
        h.append("<p>No jobs in this report.</p></body></html>")
        return "\n".join(h)

    # -- best artifact per model
    best = best_per_model(rows)
    h.append("<h2>Best artifact per model</h2>")
    h.append('<p class="muted">The smallest artifact among the jobs that kept their accuracy budget (status '
             "succeeded), per backend: int8 artifacts are packed for one engine. Ties go to the faster one.</p>")
    if best:
        big = batches[-1] if batches else None
        h.append("<table><tr><th>model</th><th>backend</th><th>recipe</th><th>bytes before</th><th>bytes after</th>"
                 f"<th>smaller</th><th>metric before → after</th><th>budget</th>"
                 f"{f'<th>b{big} faster</th>' if big else ''}<th>artifact</th></tr>")
        for (label, backend), r in sorted(best.items()):
            h.append("<tr>" + _cell(label) + _cell(backend) + _cell(r.recipe)
                     + _cell(fmt_bytes(r.size_before_bytes), "num")
                     + _cell(fmt_bytes(r.size_after_bytes), "num") + _cell(fmt_ratio(r.size_ratio), "num")
                     + _cell(f"{fmt_metric(r.metric_before)} → {fmt_metric(r.metric_after)}", "num")
                     + _cell(fmt_budget(r.budget))
                     + (_cell(fmt_ratio(r.speedup(big)), "num") if big else "")
                     + f"<td><code>{escape(r.artifact_uri or '-')}</code></td></tr>")
        h.append("</table>")
    models_without = sorted({r.model_label for r in rows} - {k[0] for k in best})
    if models_without:
        h.append(f'<p class="muted">No artifact within budget (yet) for: {escape(", ".join(models_without))}.</p>')

    # -- regressions
    regressed = [r for r in rows if r.regression]
    if regressed:
        h.append("<h2>Regressions</h2><table><tr><th>job</th><th>model</th><th>recipe</th><th>backend</th>"
                 "<th>what got worse</th></tr>")
        for r in regressed:
            h.append('<tr class="regressed">' + _cell((r.job_id or "-")[:8]) + _cell(r.model_label) + _cell(r.recipe)
                     + _cell(r.backend) + _cell(r.regression_summary() or "", "reg") + "</tr>")
        h.append("</table>")

    # -- per model plots
    h.append("<h2>Per model</h2>")
    for label in dict.fromkeys(r.model_label for r in rows):
        mrows = [r for r in rows if r.model_label == label]
        h.append(f"<h3>{escape(label)}</h3><div class=\"plots\">")
        h.append(size_metric_svg(mrows))
        native = [r for r in mrows if not r.emulated]  # emulated latencies never share a scale with native ones
        for b in sorted({b for r in native for b in r.batch_sizes}):
            h.append(latency_svg(native, b))
        h.append("</div>")
        if len(native) < len(mrows):
            h.append(f'<p class="muted">Not plotted: {len(mrows) - len(native)} emulated job(s) — {escape(EMULATED_NOTE)}.</p>')

    # -- all results
    h.append("<h2>All results</h2>")
    head = ["job", "model", "recipe", "backend", "status", "bytes before", "bytes after", "smaller"]
    head += [x for b in batches for x in (f"b{b} ms before", f"b{b} ms after", f"b{b} faster")]
    head += ["metric", "before", "after", "Δ", "eval batch", "after at batch 1 (rows)", "load while timed",
             "stayed float", "budget", "reason / error", "regression"]
    h.append("<table><tr>" + "".join(f"<th>{escape(c)}</th>" for c in head) + "</tr>")
    for r in rows:
        cls = r.status if r.status in ("failed", "rejected") else ""
        cls += " regressed" if r.regression else ""
        cells = [_cell((r.job_id or "-")[:8]), _cell(r.model_label), _cell(r.recipe), _cell(backend_label(r)),
                 f"<td>{_badges(r)}</td>", _cell(fmt_bytes(r.size_before_bytes), "num"),
                 _cell(fmt_bytes(r.size_after_bytes), "num"), _cell(fmt_ratio(r.size_ratio), "num")]
        for b in batches:
            cells += [_cell(fmt_latency(r, r.latency_before_ms.get(b)), "num"),
                      _cell(fmt_latency(r, r.latency_after_ms.get(b)), "num"),
                      _cell("emulated" if r.emulated else fmt_ratio(r.speedup(b)), "num")]
        cells += [_cell(r.metric_name or "-"), _cell(fmt_metric(r.metric_before), "num"),
                  _cell(fmt_metric(r.metric_after), "num"), _cell(fmt_delta(r.metric_delta), "num"),
                  _cell(str(r.metric_eval_batch_size or "-"), "num"),
                  _cell(f"{fmt_metric(r.metric_after_b1)} ({r.metric_b1_rows})"
                        if r.metric_after_b1 is not None else "-", "num"),
                  _cell(f"{r.timing_load_avg:.2f}" if r.timing_load_avg is not None else "-", "num"),
                  _cell(r.stayed_float()), _cell(fmt_budget(r.budget)), _cell(r.error or ""),
                  _cell(r.regression_summary() or "", "reg")]
        h.append(f'<tr class="{cls.strip()}">' + "".join(cells) + "</tr>")
    h.append("</table>")
    threads = sorted({r.latency_threads for r in rows if r.latency_threads})
    h.append('<p class="muted">Sizes are bytes of the saved artifact files (before: the float model saved the same '
             "way). Latency is the median of timed runs after warm-up on the worker of the target backend"
             f"{f', {threads[0]} thread(s)' if len(threads) == 1 else ''}; ratios are before/after, so 2.00x means "
             "half the bytes or twice as fast. The metric is computed on the same held-out inputs before and after."
             + (f" * {escape(EMULATED_NOTE)}." if any(r.emulated for r in rows) else "")
             + "</p></body></html>")
    return "\n".join(h)


__all__ = ["render_html"]

"""Inline SVG charts for the HTML report: size against metric per model, latency bars per batch size.

Drawn as text here (no plotting library, no script): the page stays self-contained.

Example:
    >>> latency_svg([], 1)
    ''
"""

from __future__ import annotations

from html import escape
from typing import Sequence

from modelpress.report.rows import ResultRow, best_per_model

BACKEND_COLORS = {"fbgemm": "#1f6fb4", "qnnpack": "#c4432b"}
EXTRA_COLORS = ("#2a9d5c", "#8a5cc2", "#c28a1f", "#3a8f9e")


def _color(backend: str, order: list[str]) -> str:
    if backend in BACKEND_COLORS:
        return BACKEND_COLORS[backend]
    return EXTRA_COLORS[order.index(backend) % len(EXTRA_COLORS)] if backend in order else EXTRA_COLORS[0]


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


def _fmt_size(n: float) -> str:
    for unit, div in (("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g} {unit}"
    return f"{n:.0f} B"


def size_metric_svg(rows: Sequence[ResultRow], *, width: int = 560, height: int = 320) -> str:
    """Scatter of artifact size (x, bytes) against the metric after (y) for one model's jobs.

    The float model is a black square; each job a dot coloured by backend, hollow when rejected,
    ringed when it is the best of its backend.
    """
    done = [r for r in rows if r.has_result and r.metric_after is not None]
    if not done:
        return '<p class="muted">No finished result to plot yet.</p>'
    best = {id(r) for r in best_per_model(done).values()}
    floats = {(r.size_before_bytes, r.metric_before) for r in done
              if r.size_before_bytes is not None and r.metric_before is not None}
    xs = [float(r.size_after_bytes or 0) for r in done] + [float(s) for s, _ in floats]
    ys = [float(r.metric_after or 0) for r in done] + [float(m) for _, m in floats]
    x_lo, x_hi = 0.0, max(xs) * 1.05 or 1.0
    y_lo, y_hi = min(ys), max(ys)
    pad = (y_hi - y_lo) * 0.1 or 0.01
    y_lo, y_hi = y_lo - pad, y_hi + pad
    left, right, top, bottom = 64, 150, 16, 44
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * pw

    def py(y: float) -> float:
        return top + ph - (y - y_lo) / (y_hi - y_lo) * ph

    metric = next((r.metric_name for r in done if r.metric_name), "metric")
    order = sorted({r.backend for r in done})
    parts = [f'<svg class="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="artifact size against {escape(metric)}">',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>']
    for t in _ticks(x_lo, x_hi):
        parts.append(f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{top + ph}" class="grid"/>'
                     f'<text x="{px(t):.1f}" y="{top + ph + 14}" class="tick" text-anchor="middle">{_fmt_size(t)}</text>')
    for t in _ticks(y_lo, y_hi):
        parts.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + pw}" y2="{py(t):.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{py(t) + 4:.1f}" class="tick" text-anchor="end">{t:.3f}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 6}" class="axis" text-anchor="middle">artifact size (bytes)</text>'
                 f'<text x="14" y="{top + ph / 2}" class="axis" text-anchor="middle" '
                 f'transform="rotate(-90 14 {top + ph / 2})">{escape(metric)} after</text>')
    for s, m in sorted(floats):
        parts.append(f'<rect x="{px(s) - 5:.1f}" y="{py(m) - 5:.1f}" width="10" height="10" class="float">'
                     f'<title>float model: {s:,} bytes, {escape(metric)} {m:.4f}</title></rect>')
    for r in done:
        c = _color(r.backend, order)
        x, y = px(float(r.size_after_bytes or 0)), py(float(r.metric_after or 0))
        fill = "none" if r.status == "rejected" else c
        tip = (f"{r.recipe} on {r.backend}: {r.size_after_bytes:,} bytes, {metric} {r.metric_after:.4f}"
               f"{' (rejected: over budget)' if r.status == 'rejected' else ''}")
        if id(r) in best:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="10" fill="none" stroke="{c}" stroke-width="1.5"/>')
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{fill}" stroke="{c}" stroke-width="2">'
                     f'<title>{escape(tip)}</title></circle>'
                     f'<text x="{x + 8:.1f}" y="{y - 6:.1f}" class="label">{escape(r.recipe)}</text>')
    ly = top + 8
    legend = [("float model", "#222", "square")] + [(b, _color(b, order), "dot") for b in order]
    legend += [("rejected (hollow)", "#666", "hollow"), ("best (ringed)", "#666", "ring")]
    for name, c, kind in legend:
        lx = left + pw + 14
        if kind == "square":
            parts.append(f'<rect x="{lx - 5}" y="{ly - 5}" width="10" height="10" class="float"/>')
        elif kind == "ring":
            parts.append(f'<circle cx="{lx}" cy="{ly}" r="6" fill="none" stroke="{c}" stroke-width="1.5"/>')
        else:
            parts.append(f'<circle cx="{lx}" cy="{ly}" r="5" fill="{"none" if kind == "hollow" else c}" '
                         f'stroke="{c}" stroke-width="2"/>')
        parts.append(f'<text x="{lx + 12}" y="{ly + 4}" class="tick">{escape(name)}</text>')
        ly += 18
    parts.append("</svg>")
    return "".join(parts)


def latency_svg(rows: Sequence[ResultRow], batch_size: int, *, width: int = 560) -> str:
    """Horizontal bars: median latency before (grey) and after (backend colour) at ``batch_size``."""
    data = [r for r in rows if r.latency_after_ms.get(batch_size) is not None]
    if not data:
        return ""
    bar, gap, left, right, top = 9, 10, 210, 70, 22
    height = top + len(data) * (2 * bar + gap) + 22
    hi = max(max(r.latency_before_ms.get(batch_size) or 0, r.latency_after_ms[batch_size]) for r in data) or 1.0
    pw = width - left - right
    order = sorted({r.backend for r in data})
    parts = [f'<svg class="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="latency before and after at batch {batch_size}">',
             f'<text x="{left - 200}" y="14" class="axis">batch {batch_size}: median ms, grey before, '
             f'colour after (shorter is faster)</text>']
    y = top
    for r in data:
        before, after = r.latency_before_ms.get(batch_size), r.latency_after_ms[batch_size]
        name = f"{r.recipe} · {r.backend}"
        parts.append(f'<text x="{left - 6}" y="{y + bar + 3}" class="tick" text-anchor="end">{escape(name)}</text>')
        if before is not None:
            parts.append(f'<rect x="{left}" y="{y}" width="{max(1.0, before / hi * pw):.1f}" height="{bar}" '
                         f'class="before"><title>before: {before:.3f} ms</title></rect>'
                         f'<text x="{left + before / hi * pw + 4:.1f}" y="{y + bar - 1}" class="tick">{before:.3f}</text>')
        c = _color(r.backend, order)
        parts.append(f'<rect x="{left}" y="{y + bar}" width="{max(1.0, after / hi * pw):.1f}" height="{bar}" '
                     f'fill="{c}"><title>after: {after:.3f} ms</title></rect>'
                     f'<text x="{left + after / hi * pw + 4:.1f}" y="{y + 2 * bar - 1}" class="tick">{after:.3f}</text>')
        y += 2 * bar + gap
    parts.append(f'<line x1="{left}" y1="{top - 4}" x2="{left}" y2="{y}" class="grid"/></svg>')
    return "".join(parts)


__all__ = ["BACKEND_COLORS", "EXTRA_COLORS", "latency_svg", "size_metric_svg"]

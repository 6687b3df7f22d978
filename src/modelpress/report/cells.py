"""Cell formatting shared by the text table and the HTML page: bytes, ratios, latencies, metrics, budgets.

Each returns ``"-"`` for a missing value, so a queued or failed job renders without special cases.

Example:
    >>> fmt_bytes(2513821), fmt_ratio(3.8671), fmt_metric(None)
    ('2,513,821', '3.87x', '-')
"""

from __future__ import annotations

from typing import Any

from modelpress.report.rows import ResultRow


def fmt_bytes(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def fmt_ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def fmt_metric(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def fmt_delta(v: float | None) -> str:
    return "-" if v is None else f"{v:+.4f}"


def fmt_budget(b: dict[str, Any] | None) -> str:
    if not b:
        return "none (any metric)"
    return f"max drop {b.get('max_drop')}" + (" (relative)" if b.get("relative") else "")


def fmt_latency(r: ResultRow, v: float | None) -> str:
    # "*" marks an emulated latency in every text format; the notes say what it means.
    return _ms(v) + ("*" if r.emulated and v is not None else "")


def backend_label(r: ResultRow) -> str:
    return f"{r.backend} ({r.worker_arch or '?'}, emulated)" if r.emulated else r.backend


__all__ = ["backend_label", "fmt_budget", "fmt_bytes", "fmt_delta", "fmt_latency", "fmt_metric", "fmt_ratio"]

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

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from html import escape
from typing import Any, Iterable, Sequence

QUANT_STEPS = frozenset({"quantize_dynamic", "quantize_static", "qat"})
BACKEND_COLORS = {"fbgemm": "#1f6fb4", "qnnpack": "#c4432b"}
EXTRA_COLORS = ("#2a9d5c", "#8a5cc2", "#c28a1f", "#3a8f9e")
FORMATS = ("table", "json", "csv")


@dataclass
class ResultRow:
    """One job's numbers, as every report format shows them."""

    job_id: str | None
    model: str
    model_label: str  # the model name, plus the weights' hash prefix when the job had its own weights
    recipe: str
    backend: str
    status: str  # queued | running | succeeded | rejected | failed | error (zoo)
    reused: bool = False
    reused_from: str | None = None
    size_before_bytes: int | None = None
    size_after_bytes: int | None = None
    metric_name: str | None = None
    metric_before: float | None = None
    metric_after: float | None = None
    latency_before_ms: dict[int, float] = field(default_factory=dict)  # batch size → median ms
    latency_after_ms: dict[int, float] = field(default_factory=dict)
    latency_threads: int | None = None
    quantized: bool | None = None
    float_layers: list[str] = field(default_factory=list)
    budget: dict[str, Any] | None = None
    error: str | None = None  # the failure, or the reason a result was rejected
    regression: dict[str, Any] | None = None
    artifact_uri: str | None = None
    # What the figures were measured under: dynamic int8 depends on the eval batch, so the metric at batch 1
    # (on metric_b1_rows rows) is shown beside it; and the host's load while latency was timed.
    metric_eval_batch_size: int | None = None
    metric_after_b1: float | None = None
    metric_b1_rows: int | None = None
    timing_load_avg: float | None = None
    worker_arch: str | None = None
    # How the worker's CPU was emulated ("qemu-user"), None when native: such latencies are labelled,
    # left out of latency plots and of "best" choices, and get no speed ratio (see EMULATED_NOTE).
    emulated: str | None = None
    runtime: str | None = None  # where the artifact runs (auto: the winner); None = torch (rows before issue 11)
    runner_up: str | None = None  # auto: the second-best candidate, "runtime (objective value)"
    # The precision the runtime chose on the measuring host for float parts (OpenVINO: bf16 where the CPU has
    # it): the same file can run at another one elsewhere. None when the runtime does not report it.
    runtime_precision: str | None = None

    @staticmethod
    def _ratio(before: float | None, after: float | None) -> float | None:
        return None if before is None or after is None or after == 0 else before / after

    @property
    def size_ratio(self) -> float | None:
        """How many times smaller the artifact is than the float model (before / after)."""
        return self._ratio(self.size_before_bytes, self.size_after_bytes)

    def speedup(self, batch_size: int) -> float | None:
        """How many times faster at ``batch_size`` (before / after median); None when emulated."""
        if self.emulated:
            return None
        return self._ratio(self.latency_before_ms.get(batch_size), self.latency_after_ms.get(batch_size))

    @property
    def metric_delta(self) -> float | None:
        return None if self.metric_before is None or self.metric_after is None else self.metric_after - self.metric_before

    @property
    def batch_sizes(self) -> list[int]:
        return sorted({*self.latency_before_ms, *self.latency_after_ms})

    @property
    def has_result(self) -> bool:
        return self.status in ("succeeded", "rejected") and self.size_after_bytes is not None

    def stayed_float(self) -> str:
        """What was left in float32: everything without a quantization step, else the listed layers."""
        if self.quantized is None:
            return "-"
        if not self.quantized:
            return "all (no quantization)"
        return ", ".join(self.float_layers) if self.float_layers else "none"

    def regression_summary(self) -> str | None:
        if not self.regression:
            return None
        if isinstance(self.regression.get("summary"), str):
            return self.regression["summary"]
        return json.dumps(self.regression, sort_keys=True, default=str)[:300]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["latency_before_ms"] = {str(k): v for k, v in self.latency_before_ms.items()}
        d["latency_after_ms"] = {str(k): v for k, v in self.latency_after_ms.items()}
        d["size_ratio"] = self.size_ratio
        d["speedup"] = {str(b): self.speedup(b) for b in self.batch_sizes}
        d["metric_delta"] = self.metric_delta
        d["stayed_float"] = self.stayed_float()
        return d


# --------------------------------------------------------------------------------- sources
def _json(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return None
    return v


def rows_from_jobs(jobs: Iterable[dict[str, Any]]) -> list[ResultRow]:
    """Job rows (``Job.to_dict()``) → report rows; latency per batch size from ``measurements``.

    Example:
        >>> rows_from_jobs([{"id": "j1", "model_name": "mlp", "recipe_name": "r", "backend": "fbgemm",
        ...                  "status": "failed", "error": "boom"}])[0].error
        'boom'
    """
    out = []
    for j in jobs:
        m = _json(j.get("measurements")) or {}
        recipe = _json(j.get("recipe_json")) or {}
        steps = recipe.get("steps") if isinstance(recipe, dict) else None

        def lat(which: str) -> dict[int, float]:
            stats = m.get(f"latency_{which}") or []
            got = {int(s["batch_size"]): float(s["median_ms"]) for s in stats if s.get("median_ms") is not None}
            headline = j.get(f"latency_{which}_median_ms")
            if not got and headline is not None and j.get("latency_batch_size"):
                got = {int(j["latency_batch_size"]): float(headline)}
            return got

        sha = j.get("model_sha256") or ""
        label = f"{j['model_name']}@{sha[:8]}" if j.get("model_weights_uri") and sha else j["model_name"]
        out.append(ResultRow(
            job_id=j.get("id"), model=j["model_name"], model_label=label, recipe=j["recipe_name"],
            backend=j["backend"], status=j["status"], reused=bool(j.get("reused")),
            reused_from=j.get("reused_from_job_id"), size_before_bytes=j.get("size_before_bytes"),
            size_after_bytes=j.get("size_after_bytes"), metric_name=j.get("metric_name"),
            metric_before=j.get("metric_before"), metric_after=j.get("metric_after"),
            latency_before_ms=lat("before"), latency_after_ms=lat("after"), latency_threads=j.get("latency_threads"),
            quantized=None if steps is None else any(s.get("type") in QUANT_STEPS for s in steps),
            float_layers=list(m.get("float_layers") or []),
            budget=recipe.get("budget") if isinstance(recipe, dict) else None,
            error=j.get("error"), regression=_json(j.get("regression")), artifact_uri=j.get("artifact_uri"),
            metric_eval_batch_size=j.get("metric_eval_batch_size"), metric_after_b1=j.get("metric_after_b1"),
            metric_b1_rows=j.get("metric_b1_rows"), timing_load_avg=j.get("timing_load_avg"),
            worker_arch=j.get("worker_arch"), emulated=j.get("emulated"),
            runtime=j.get("runtime"), runner_up=_runner_up(m),
            runtime_precision=((m.get("extra") or {}).get("execution") or {}).get("inference_precision"),
        ))
    return out


def _runner_up(m: dict[str, Any]) -> str | None:
    """For an ``auto`` job: the best built candidate other than the winner, with its bytes and largest-batch ms."""
    extra = m.get("extra") or {}
    cands = [c for c in extra.get("candidates") or [] if c.get("status") == "built"]
    # The winner is marked; rows from before candidate variants existed had one candidate per runtime.
    marked = any(c.get("chosen") for c in cands)
    built = [c for c in cands if (not c.get("chosen") if marked else c["runtime"] != m.get("runtime"))]
    if not built:
        return None

    def ms(c: dict[str, Any]) -> float:
        return float(max(c["latency"], key=lambda s: s["batch_size"])["median_ms"])

    c = min(built, key=ms)
    variant = ", ".join(f"{k}={v}" for k, v in sorted((c.get("variant") or {}).items()))
    return f"{c['runtime']}{f' ({variant})' if variant else ''} ({c['bytes']} B, {ms(c):.3f} ms)"


def rows_from_zoo(zoo_rows: Iterable[Any]) -> list[ResultRow]:
    """``optimize.zoo_report.ReportRow`` objects (an in-process zoo run) → report rows."""
    out = []
    for r in zoo_rows:
        out.append(ResultRow(
            job_id=None, model=r.model, model_label=r.model, recipe=r.recipe, backend=r.engine, status=r.status,
            size_before_bytes=r.size_before_bytes, size_after_bytes=r.size_after_bytes, metric_name=r.metric_name,
            metric_before=r.metric_before, metric_after=r.metric_after,
            latency_before_ms={int(k): v for k, v in r.latency_before_ms.items()},
            latency_after_ms={int(k): v for k, v in r.latency_after_ms.items()},
            quantized=r.quantized, float_layers=list(r.float_layers), error=r.error,
            artifact_uri=r.artifact_path,
        ))
    return out


def best_per_model(rows: Sequence[ResultRow]) -> dict[tuple[str, str], ResultRow]:
    """``(model label, backend)`` → the smallest artifact that kept its budget (``succeeded``).

    Artifacts are engine-specific (packed int8 weights), hence one winner per backend. Ties go to the
    faster median latency at the largest measured batch, then the higher metric.

    Example:
        >>> a = ResultRow(job_id="a", model="m", model_label="m", recipe="r1", backend="fbgemm",
        ...               status="succeeded", size_after_bytes=10)
        >>> b = ResultRow(job_id="b", model="m", model_label="m", recipe="r2", backend="fbgemm",
        ...               status="rejected", size_after_bytes=5)
        >>> best_per_model([a, b])[("m", "fbgemm")].recipe
        'r1'
    """
    best: dict[tuple[str, str], ResultRow] = {}

    def rank(r: ResultRow) -> tuple[float, float, float]:
        b = max(r.latency_after_ms) if r.latency_after_ms else None
        return (float(r.size_after_bytes or 0), r.latency_after_ms[b] if b is not None else float("inf"),
                -(r.metric_after if r.metric_after is not None else float("-inf")))

    for r in rows:
        # An emulated row's latency cannot break a tie against a native one: it never competes.
        if r.status != "succeeded" or r.size_after_bytes is None or r.emulated:
            continue
        key = (r.model_label, r.backend)
        if key not in best or rank(r) < rank(best[key]):
            best[key] = r
    return best


def status_counts(rows: Sequence[ResultRow]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    counts["reused"] = sum(r.reused for r in rows)
    return counts


# --------------------------------------------------------------------------------- formatting
def _bytes(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _metric(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _delta(v: float | None) -> str:
    return "-" if v is None else f"{v:+.4f}"


def _budget(b: dict[str, Any] | None) -> str:
    if not b:
        return "none (any metric)"
    return f"max drop {b.get('max_drop')}" + (" (relative)" if b.get("relative") else "")


def _status(r: ResultRow) -> str:
    return r.status + (" (reused)" if r.reused else "")


EMULATED_NOTE = ("emulated CPU (e.g. aarch64 under qemu-user, tools/arm-worker): latency is recorded but shows only "
                 "that the path runs, not its speed; never compare it with native rows")


def _lat(r: ResultRow, v: float | None) -> str:
    # "*" marks an emulated latency in every text format; the notes say what it means.
    return _ms(v) + ("*" if r.emulated and v is not None else "")


def _backend(r: ResultRow) -> str:
    return f"{r.backend} ({r.worker_arch or '?'}, emulated)" if r.emulated else r.backend


def _all_batches(rows: Sequence[ResultRow]) -> list[int]:
    return sorted({b for r in rows for b in r.batch_sizes})


def render_json(rows: Sequence[ResultRow]) -> str:
    """Every row with every field and the derived ratios, as a JSON list."""
    return json.dumps([r.to_dict() for r in rows], indent=1, sort_keys=True)


def render_csv(rows: Sequence[ResultRow]) -> str:
    """One line per job; latency columns per measured batch size (``b64_ms_before``...)."""
    batches = _all_batches(rows)
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
    batches = _all_batches(rows)
    head = ["job", "model", "recipe", "backend", "status", "bytes before", "bytes after", "smaller"]
    head += [h for b in batches for h in (f"b{b} ms before", f"b{b} ms after", f"b{b} faster")]
    head += ["metric", "before", "after", "stayed float", "runtime"]
    body = []
    for r in rows:
        line = [(r.job_id or "-")[:8], r.model_label, r.recipe, _backend(r), _status(r), _bytes(r.size_before_bytes),
                _bytes(r.size_after_bytes), _x(r.size_ratio)]
        for b in batches:
            line += [_lat(r, r.latency_before_ms.get(b)), _lat(r, r.latency_after_ms.get(b)),
                     "emulated" if r.emulated else _x(r.speedup(b))]
        line += [r.metric_name or "-", _metric(r.metric_before), _metric(r.metric_after), r.stayed_float(),
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


# --------------------------------------------------------------------------------- SVG plots
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


# --------------------------------------------------------------------------------- HTML
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
    batches = _all_batches(rows)
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
            h.append("<tr>" + _cell(label) + _cell(backend) + _cell(r.recipe) + _cell(_bytes(r.size_before_bytes), "num")
                     + _cell(_bytes(r.size_after_bytes), "num") + _cell(_x(r.size_ratio), "num")
                     + _cell(f"{_metric(r.metric_before)} → {_metric(r.metric_after)}", "num") + _cell(_budget(r.budget))
                     + (_cell(_x(r.speedup(big)), "num") if big else "")
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
        cells = [_cell((r.job_id or "-")[:8]), _cell(r.model_label), _cell(r.recipe), _cell(_backend(r)),
                 f"<td>{_badges(r)}</td>", _cell(_bytes(r.size_before_bytes), "num"),
                 _cell(_bytes(r.size_after_bytes), "num"), _cell(_x(r.size_ratio), "num")]
        for b in batches:
            cells += [_cell(_lat(r, r.latency_before_ms.get(b)), "num"), _cell(_lat(r, r.latency_after_ms.get(b)), "num"),
                      _cell("emulated" if r.emulated else _x(r.speedup(b)), "num")]
        cells += [_cell(r.metric_name or "-"), _cell(_metric(r.metric_before), "num"),
                  _cell(_metric(r.metric_after), "num"), _cell(_delta(r.metric_delta), "num"),
                  _cell(str(r.metric_eval_batch_size or "-"), "num"),
                  _cell(f"{_metric(r.metric_after_b1)} ({r.metric_b1_rows})" if r.metric_after_b1 is not None else "-",
                        "num"),
                  _cell(f"{r.timing_load_avg:.2f}" if r.timing_load_avg is not None else "-", "num"),
                  _cell(r.stayed_float()), _cell(_budget(r.budget)), _cell(r.error or ""),
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


__all__ = ["FORMATS", "ResultRow", "best_per_model", "latency_svg", "render_csv", "render_html", "render_json",
           "render_table", "rows_from_jobs", "rows_from_zoo", "size_metric_svg", "status_counts"]

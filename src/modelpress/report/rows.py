"""Report rows: one job's numbers (``ResultRow``), read from job rows or a zoo run, and the choices made on them.

``rows_from_jobs`` reads ``Job.to_dict()`` rows (latency per batch size from ``measurements``),
``rows_from_zoo`` an in-process zoo run; ``best_per_model`` picks the smallest artifact that kept its budget
per model and backend. Every renderer (``report.text``, ``report.charts``, ``report.page``) reads these.

Example:
    >>> rows = rows_from_jobs([{"id": "j1", "model_name": "mlp", "recipe_name": "r", "backend": "fbgemm",
    ...                         "status": "succeeded", "size_before_bytes": 400, "size_after_bytes": 100}])
    >>> rows[0].size_ratio, all_batch_sizes(rows)
    (4.0, [])
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

QUANT_STEPS = frozenset({"quantize_dynamic", "quantize_static", "qat"})

EMULATED_NOTE = ("emulated CPU (e.g. aarch64 under qemu-user, tools/arm-worker): latency is recorded but shows only "
                 "that the path runs, not its speed; never compare it with native rows")


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
    """``zoo.report.ReportRow`` objects (an in-process zoo run) → report rows."""
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


def all_batch_sizes(rows: Sequence[ResultRow]) -> list[int]:
    """Every batch size any of ``rows`` was timed at, ascending: the latency columns of every format."""
    return sorted({b for r in rows for b in r.batch_sizes})


__all__ = ["EMULATED_NOTE", "QUANT_STEPS", "ResultRow", "all_batch_sizes", "best_per_model", "rows_from_jobs",
           "rows_from_zoo", "status_counts"]

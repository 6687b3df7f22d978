"""The zoo report: every registered model × a list of recipes, each run through ``optimize_model``.

A pure library call (no Celery, no database); the CLI's ``modelpress report --zoo`` prints
``format_report(run_zoo_report(...))``. Every number comes from the pipeline's own measurements: size is
the saved artifact's bytes, latency the median over timed runs at each of the spec's batch sizes,
the metric on the held-out eval data. A recipe that does not apply to a model (e.g. width distillation
of a class without a ``width`` argument) gives a row with its error instead of stopping the report.

Example:
    >>> rows = run_zoo_report(store="/tmp/mp-report", models=["digits_cnn"],
    ...                       recipes=["prune50-finetune"])  # doctest: +SKIP
    >>> print(format_report(rows))  # doctest: +SKIP
"""

from __future__ import annotations

import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from modelpress.errors import UserInputError

DEFAULT_REPORT_RECIPES: tuple[str, ...] = (
    "dynamic-int8",
    "l1-sparse50",
    "static-int8",
    "qat-int8",
    "prune50-finetune",
    "prune50-finetune-static-int8",
    "distill-w0.5",
    "distill-static-int8",
)

_QUANT_STEPS = {"quantize_dynamic", "quantize_static", "qat"}


def float_weight_layers(model: Any) -> list[str]:
    """Names of the layers that still compute with float weights (plain Linear/Conv/RNN/Embedding).

    Read from the reloaded artifact itself, so it says what *is* float, not what a recipe asked for.

    Example:
        >>> import torch
        >>> float_weight_layers(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))
        ['0']
    """
    from torch import nn

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LSTM, nn.GRU, nn.RNN, nn.Embedding, nn.EmbeddingBag)
    # Exact types: QAT/intrinsic subclasses of nn.Linear are not plain float layers.
    return [name for name, m in model.named_modules() if type(m) in kinds]


@dataclass
class ReportRow:
    """One model × recipe: the measured before/after numbers, or the error that stopped it."""

    model: str
    recipe: str
    engine: str
    status: str  # "succeeded" | "rejected" | "error"
    error: str | None = None
    size_before_bytes: int | None = None
    size_after_bytes: int | None = None
    metric_name: str | None = None
    metric_before: float | None = None
    metric_after: float | None = None
    # batch size → median ms
    latency_before_ms: dict[int, float] = field(default_factory=dict)
    latency_after_ms: dict[int, float] = field(default_factory=dict)
    params_before: int | None = None
    params_after: int | None = None
    flops_before: int | None = None
    flops_after: int | None = None
    quantized: bool = False
    float_layers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    artifact_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def ratio(self, before: float | None, after: float | None) -> float | None:
        """``before / after`` (how many times smaller/faster), None when not measurable."""
        if before is None or after is None or after == 0:
            return None
        return before / after

    @property
    def size_ratio(self) -> float | None:
        return self.ratio(self.size_before_bytes, self.size_after_bytes)

    def speedup(self, batch_size: int) -> float | None:
        return self.ratio(self.latency_before_ms.get(batch_size), self.latency_after_ms.get(batch_size))

    @property
    def flops_ratio(self) -> float | None:
        return self.ratio(self.flops_before, self.flops_after)

    @property
    def metric_drop_points(self) -> float | None:
        if self.metric_before is None or self.metric_after is None:
            return None
        return 100.0 * (self.metric_before - self.metric_after)


def _notes(steps: list[dict[str, Any]], metas: list[dict[str, Any]]) -> list[str]:
    # The few facts per step a reader of the table needs to interpret the numbers.
    notes = []
    for step, meta in zip(steps, metas, strict=False):
        kind = step.get("type")
        if kind == "prune_l1_unstructured" and "compressed_size" in meta:
            c = meta["compressed_size"]
            notes.append(f"sparsity {meta['sparsity']:.0%}; zlib'd state dict {c['zlib_state_dict_bytes_before']}→"
                         f"{c['zlib_state_dict_bytes_after']} B (compressed copy, not the artifact)")
        elif kind == "prune_structured" and "flops_ratio" in meta:
            notes.append(f"structured: {meta['pruned_groups']} groups pruned, output layer "
                         f"{', '.join(meta['auto_ignored_output_layers'])} kept")
        elif kind == "finetune" and "metric_before_finetune" in meta:
            notes.append(f"finetune ({meta['target']}): {meta['metric_before_finetune']:.4f}→"
                         f"{meta['metric_after_finetune']:.4f}")
        elif kind == "distill" and "student_distilled_metric" in meta:
            alone = meta.get("student_alone_metric")
            notes.append(f"distilled student {meta['student_distilled_metric']:.4f} vs alone "
                         f"{'n/a' if alone is None else f'{alone:.4f}'} (teacher {meta['teacher_metric']:.4f})")
    return notes


def run_zoo_report(*, store: str | Path, models: Sequence[str] | None = None,
                   recipes: Sequence[str] = DEFAULT_REPORT_RECIPES, engine: str = "fbgemm", threads: int = 1,
                   warmup: int = 10, runs: int = 50, raise_errors: bool = False,
                   log: Callable[[str], None] = lambda m: None) -> list[ReportRow]:
    """Run each model (default: every registered one) with each recipe; one ``ReportRow`` per pair.

    Errors of one pair are recorded in its row (``status="error"``) unless ``raise_errors``.

    Example:
        >>> rows = run_zoo_report(store="/tmp/mp", models=["mlp"], recipes=["dynamic-int8"])  # doctest: +SKIP
        >>> rows[0].size_ratio > 3  # doctest: +SKIP
        True
    """
    from modelpress.optimize.artifacts import load_artifact
    from modelpress.optimize.job import optimize_model
    from modelpress.optimize.recipes import resolve_recipe
    from modelpress.optimize.sources.registered import registered_models

    resolved = [resolve_recipe(r) for r in recipes]  # a bad recipe name fails before hours of work
    names = list(models) if models is not None else registered_models()
    rows: list[ReportRow] = []
    for model_name in names:
        for recipe in resolved:
            log(f"report: {model_name} × {recipe.name}")
            try:
                r = optimize_model(model_name=model_name, recipe=recipe, engine=engine, store=store,
                                   threads=threads, warmup=warmup, runs=runs, log=log)
            except Exception as e:  # noqa: BLE001 - one failing pair must not hide the others' numbers
                if raise_errors:
                    raise
                kind = "" if isinstance(e, UserInputError) else f"{type(e).__name__}: "
                msg = " ".join(str(e).split()) or type(e).__name__
                if not isinstance(e, (UserInputError, NotImplementedError)):
                    log(traceback.format_exc())
                rows.append(ReportRow(model=model_name, recipe=recipe.name, engine=engine, status="error",
                                      error=f"{kind}{msg}"[:400]))
                continue
            steps = r.recipe["steps"]
            notes = _notes(steps, r.steps_meta)
            try:
                # The report reloads what it reports on: an artifact that cannot be loaded is a failure.
                float_layers = float_weight_layers(load_artifact(r.artifact_path).model)
            except Exception as e:  # noqa: BLE001 - recorded in the row, never hidden
                if raise_errors:
                    raise
                float_layers = list(r.float_layers)
                notes.insert(0, f"ARTIFACT DID NOT RELOAD: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
            rows.append(ReportRow(
                model=model_name, recipe=recipe.name, engine=engine, status=r.status, error=r.reason,
                size_before_bytes=r.size_before_bytes, size_after_bytes=r.size_after_bytes,
                metric_name=r.metric_name, metric_before=r.metric_before, metric_after=r.metric_after,
                latency_before_ms={s["batch_size"]: s["median_ms"] for s in r.latency_before},
                latency_after_ms={s["batch_size"]: s["median_ms"] for s in r.latency_after},
                params_before=r.params_before, params_after=r.params_after,
                flops_before=r.flops_before, flops_after=r.flops_after,
                quantized=any(s["type"] in _QUANT_STEPS for s in steps),
                float_layers=float_layers, notes=notes,
                artifact_path=r.artifact_path,
            ))
    return rows


# ------------------------------------------------------------------------------- formatting
def _x(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


def _num(v: float | int | None) -> str:
    if v is None:
        return "–"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.3g}" if v >= 100 else f"{v:.2f}"


def _what_stayed_float(row: ReportRow) -> str:
    if not row.quantized:
        return "all (no quantization)"
    if not row.float_layers:
        return "none"
    shown = row.float_layers[:6]
    more = len(row.float_layers) - len(shown)
    return ", ".join(shown) + (f" (+{more} more)" if more else "")


def format_report(rows: Sequence[ReportRow], *, comparisons: Sequence[Any] = ()) -> str:
    """A markdown table per model (plain text readable too), then any distillation comparisons.

    Ratios are before/after: 4.00× size means the artifact is four times smaller, 2.00× latency twice
    as fast. ``comparisons`` are ``distillation.DistillComparison`` objects (anything with ``format()``).

    Example:
        >>> row = ReportRow(model="m", recipe="r", engine="fbgemm", status="error", error="no labels")
        >>> "no labels" in format_report([row])
        True
    """
    out: list[str] = []
    for model in dict.fromkeys(r.model for r in rows):
        mrows = [r for r in rows if r.model == model]
        batches = sorted({b for r in mrows for b in (*r.latency_before_ms, *r.latency_after_ms)})
        metric = next((r.metric_name for r in mrows if r.metric_name), "metric")
        head = (["recipe", "status", "size bytes before→after", "size ×"]
                + [h for b in batches for h in (f"b{b} ms before→after", f"b{b} ×")]
                + [f"{metric} before→after", "Δ points", "params before→after", "FLOPs before→after", "FLOPs ×",
                   "stayed float", "notes"])
        out += [f"### {model} (engine {mrows[0].engine})", "", "| " + " | ".join(head) + " |",
                "|" + "|".join("---" for _ in head) + "|"]
        for r in mrows:
            if r.status == "error":
                cells = [r.recipe, "error"] + ["–"] * (len(head) - 3) + [r.error or ""]
            else:
                cells = [r.recipe, r.status, f"{_num(r.size_before_bytes)}→{_num(r.size_after_bytes)}", _x(r.size_ratio)]
                for b in batches:
                    cells += [f"{_num(r.latency_before_ms.get(b))}→{_num(r.latency_after_ms.get(b))}", _x(r.speedup(b))]
                drop = r.metric_drop_points
                cells += [f"{r.metric_before:.4f}→{r.metric_after:.4f}" if r.metric_before is not None else "–",
                          "–" if drop is None else f"{0.0 - drop:+.2f}",  # 0.0 - 0.0 prints +0.00, not -0.00
                          f"{_num(r.params_before)}→{_num(r.params_after)}",
                          f"{_num(r.flops_before)}→{_num(r.flops_after)}", _x(r.flops_ratio),
                          _what_stayed_float(r),
                          "; ".join(([f"rejected: {r.error}"] if r.status == "rejected" and r.error else []) + r.notes)]
            out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        out.append("")
    out.append("Size: bytes of the saved artifact (before = float model in the same format). Latency: median of "
               "timed runs after warm-up, one thread. Ratios are before/after. FLOPs counted on the last float "
               "model (quantization does not change the number of multiply-accumulates).")
    for c in comparisons:
        out += ["", c.format()]
    return "\n".join(out) + "\n"


__all__ = ["DEFAULT_REPORT_RECIPES", "ReportRow", "float_weight_layers", "format_report", "run_zoo_report"]

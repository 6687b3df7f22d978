"""The coverage matrix: every family teams hold (``families``) × every runtime, on this host's CPU features.

Each family is built from a random-initialised config and saved as its users save it, checked as ``submit``
checks it, then run through ``optimize_model`` with one recipe (``static-int8`` by default; a causal LM's
family names its own, ``int8-weight-only``) pinned to each runtime. A cell is:

- ``PASS``: the job succeeded (artifact built, measured, reloaded to the same outputs);
- ``REJECTED``: the job ran and the budget refused the result (the reason says by how much);
- ``FAIL``: the family did not go through, with the reason: refused at submit (an unsupported task), an
  error while building, exporting or quantizing.

A pure library call (no Celery, no database): ``modelpress report --coverage`` prints ``format_matrix`` of it,
and ``benchmarks/coverage_matrix.py`` publishes it in docs/benchmarks.md.

Example:
    >>> cells = run_coverage(store="/tmp/mp-coverage", families=["ViT"], runtimes=["torch"])  # doctest: +SKIP
    >>> print(format_matrix(cells))  # doctest: +SKIP
"""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

RUNTIMES: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
INT8_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16")


@dataclass
class Cell:
    """One family × runtime: the outcome and why."""

    family: str
    architecture: str
    runtime: str
    status: str  # PASS, REJECTED or FAIL
    reason: str = ""
    metric_name: str | None = None
    metric_before: float | None = None
    metric_after: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_features() -> list[str]:
    """The int8-relevant ISA features of this host (the matrix's CPU column).

    Example:
        >>> isinstance(cpu_features(), list)
        True
    """
    from modelpress.optimize.hostcpu import cpu_flags

    return sorted(cpu_flags() & set(INT8_FEATURES))


def _one_line(e: BaseException, store: Path) -> str:
    """The error in one line: its first line and any later line naming an error (a nested error's own words
    often come last: torch.load's "Unsupported global: ..."), the run's store path shortened."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()] or [""]
    msg = " | ".join([lines[0][:300]] + [ln[:300] for ln in lines[1:] if "error" in ln.lower()][:2])
    return f"{type(e).__name__}: {msg.replace(str(store), '<store>')}"[:900]


def run_coverage(*, store: str | Path, families: Sequence[str] | None = None, runtimes: Sequence[str] = RUNTIMES,
                 recipe: str = "static-int8", warmup: int = 1, runs: int = 3,
                 progress: Callable[[Cell], None] | None = None) -> list[Cell]:
    """Every family × runtime through the pipeline (``families``: names, default all).

    Example:
        >>> [c.status for c in run_coverage(store="/tmp/c", families=["Llama"], runtimes=["torch"])]  # doctest: +SKIP
        ['FAIL']
    """
    from modelpress.optimize import optimize_model
    from modelpress.optimize.recipes import resolve_recipe, with_runtime
    from modelpress.optimize.sources import parse_model_ref
    from modelpress.optimize.sources.submit import check_ref
    from modelpress.settings import native_backend
    from modelpress.zoo.families import FAMILIES, build_family, family

    chosen = [family(n) for n in families] if families else list(FAMILIES)
    store = Path(store)
    cells: list[Cell] = []

    def add(cell: Cell) -> None:
        cells.append(cell)
        if progress is not None:
            progress(cell)

    for fam in chosen:
        t0 = time.monotonic()
        try:
            built = build_family(fam, store / "families")
            ref = parse_model_ref(built.model, weights=built.weights, data=built.data, preprocess=built.preprocess,
                                  max_length=built.max_length, latency_batches=(1, 8))
            problems = check_ref(ref, max_bytes=1 << 32)
        except Exception as e:  # noqa: BLE001 - a family that cannot be built is a FAIL with its reason
            for rt in runtimes:
                add(Cell(fam.name, fam.architecture, rt, "FAIL", f"building the family: {_one_line(e, store)}",
                         seconds=round(time.monotonic() - t0, 1)))
            continue
        if problems:
            for rt in runtimes:
                add(Cell(fam.name, fam.architecture, rt, "FAIL",
                         "refused at submit: " + problems[0][1].replace(str(store), "<store>")[:600]))
            continue
        for rt in runtimes:
            t0 = time.monotonic()
            try:
                r = optimize_model(model_ref=ref, recipe=with_runtime(resolve_recipe(fam.recipe or recipe), rt),
                                   engine=native_backend(), store=store / "store", warmup=warmup, runs=runs)
            except Exception as e:  # noqa: BLE001 - the matrix records every failure with its reason
                traceback.print_exc()
                add(Cell(fam.name, fam.architecture, rt, "FAIL", _one_line(e, store),
                         seconds=round(time.monotonic() - t0, 1)))
                continue
            status = {"succeeded": "PASS", "rejected": "REJECTED"}.get(r.status, "FAIL")
            add(Cell(fam.name, fam.architecture, rt, status, (r.reason or "").replace(str(store), "<store>"),
                     r.metric_name, r.metric_before,
                     r.metric_after, round(time.monotonic() - t0, 1)))
    return cells


def format_matrix(cells: Sequence[Cell], *, features: Sequence[str] | None = None) -> str:
    """The matrix as a Markdown table: one row per family, one column per runtime, then every reason.

    Example:
        >>> print(format_matrix([Cell("ViT", "ViTForImageClassification", "torch", "PASS")], features=["avx2"]))
        CPU features: avx2
        <BLANKLINE>
        | family | architecture | torch |
        |---|---|---|
        | ViT | ViTForImageClassification | PASS |
        <BLANKLINE>
    """
    runtimes = list(dict.fromkeys(c.runtime for c in cells))
    fams = list(dict.fromkeys(c.family for c in cells))
    by = {(c.family, c.runtime): c for c in cells}
    lines = [f"CPU features: {', '.join(features if features is not None else cpu_features()) or 'none'}", "",
             "| family | architecture | " + " | ".join(runtimes) + " |", "|" + "---|" * (2 + len(runtimes))]
    notes: list[str] = []
    for f in fams:
        arch = next(c.architecture for c in cells if c.family == f)
        row = []
        for rt in runtimes:
            c = by.get((f, rt))
            if c is None:
                row.append("–")
                continue
            text = c.status
            if c.status != "PASS" and c.reason:
                notes.append(f"- **{f} × {rt}: {c.status}**: {c.reason}")
                text += f" ({len(notes)})"
            row.append(text)
        lines.append(f"| {f} | {arch} | " + " | ".join(row) + " |")
    if notes:
        lines += ["", *[n.replace("- **", f"- ({i}) **", 1) for i, n in enumerate(notes, 1)]]
    return "\n".join(lines) + "\n"


__all__ = ["Cell", "RUNTIMES", "cpu_features", "format_matrix", "run_coverage"]

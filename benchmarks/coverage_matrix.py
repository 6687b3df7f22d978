"""Coverage matrix (issue 23 item 4): the architecture families teams hold × runtime, on this host's CPU.

Command (from the repository root):

    .venv/bin/python benchmarks/coverage_matrix.py                               # every family × torch, ORT, OpenVINO
    .venv/bin/python benchmarks/coverage_matrix.py --families ViT,BERT --runtimes torch   # a part

Writes ``benchmarks/results/coverage_matrix.json`` and ``coverage_matrix.md`` (``--out DIR`` to change); run_all puts the
matrix in docs/benchmarks.md. Each family is built from a random-initialised config and saved as its users
save it (``modelpress.zoo.families``), checked as submit checks it, then run through the pipeline with one
recipe (``static-int8``) pinned to each runtime (``modelpress.zoo.coverage``): PASS, REJECTED (the budget
refused the result) or FAIL with its reason. The same matrix prints with ``modelpress report --coverage``.
Latency is not the point here (tiny models, 3 timed runs); it is whether each family goes through.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NAME = "coverage_matrix"


def render(doc: dict[str, Any]) -> str:
    from modelpress.zoo.coverage import Cell, format_matrix

    cells = [Cell(**c) for c in doc["cells"]]
    counts = {s: sum(c.status == s for c in cells) for s in ("PASS", "REJECTED", "FAIL")}
    fams = list(dict.fromkeys(c.family for c in cells))
    through = [f for f in fams if any(c.family == f and c.status in ("PASS", "REJECTED") for c in cells)]
    out = ["## Coverage: architecture families × runtimes", "", f"Command: `{doc['command']}`", "",
           f"Recipe `{doc['args']['recipe']}` (causal LMs: `int8-weight-only`) pinned to each runtime; each family built from a random-initialised "
           "config and saved as its users save it (`modelpress.zoo.families`). PASS: the job succeeded and its "
           "artifact reloaded to the same outputs; REJECTED: it ran and the budget refused the result; FAIL: it did "
           f"not go through, with the reason. {counts['PASS']} PASS, {counts['REJECTED']} REJECTED, {counts['FAIL']} "
           f"FAIL; {len(through)} of {len(fams)} families PASS or REJECTED in at least one runtime"
           + (f" (not: {', '.join(f for f in fams if f not in through)})" if len(through) < len(fams) else "") + ".",
           "", format_matrix(cells, features=doc["cpu_features"])]
    return "\n".join(out)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--families", default="", help="comma list of families (default: all)")
    p.add_argument("--runtimes", default="torch,onnxruntime,openvino")
    p.add_argument("--recipe", default="static-int8")
    p.add_argument("--out", type=Path, default=C.DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from modelpress.zoo.coverage import cpu_features, run_coverage

    run = C.Run(NAME, "coverage_matrix.py", argv, a)
    store = Path(tempfile.mkdtemp(prefix="mp-bench-coverage-"))
    try:
        cells = run_coverage(store=store, families=[f for f in a.families.split(",") if f] or None,
                             runtimes=[r for r in a.runtimes.split(",") if r], recipe=a.recipe,
                             progress=lambda c: print(f"  {c.family} × {c.runtime}: {c.status} {c.reason[:160]}",
                                                      file=sys.stderr, flush=True))
    finally:
        shutil.rmtree(store, ignore_errors=True)
    doc = run.finish({"cpu_features": cpu_features(), "cells": [c.to_dict() for c in cells]})
    md = render(doc)
    jp, mp = C.write_outputs(a.out, NAME, doc, md)
    print(md)
    print(f"wrote {jp} and {mp}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Measurement stability: the same latency measurement repeated N times, and how much it moves.

Command (from the repository root):

    .venv/bin/python benchmarks/stability.py                         # mlp, float and dynamic-int8, 20 repeats
    .venv/bin/python benchmarks/stability.py --models mlp,digits_cnn --repeats 30
    .venv/bin/python benchmarks/stability.py --repeats 3 --runs 5 --warmup 1  # smoke

Writes ``benchmarks/results/stability.json`` and ``stability.md`` (``--out DIR`` to change).

Each repeat is exactly what a job reports: ``modelpress.optimize.measure.measure_latency`` (``--warmup``
calls, then ``--runs`` timed calls, median and p90, one thread) at each of the spec's latency batch
sizes. With ``--recipe`` (default ``dynamic-int8``) the recipe's reloaded artifact is measured right after
the float model in every repeat, so the spread of the *speed-up ratio* is measured too — the number
users compare. Reported per model × batch: min / median / max of the N medians, their coefficient of
variation, and the noise band ``(max − min) / median``: two single measurements that differ by less than
that band are not a real difference on this machine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NAME = "stability"


def bench_model(name: str, a: argparse.Namespace, store: Path) -> dict[str, Any]:
    import torch

    from modelpress.optimize.artifacts import load_artifact
    from modelpress.optimize.measure import measure_latency
    from modelpress.optimize.job import optimize_model
    from modelpress.optimize.recipes import resolve_recipe
    from modelpress.optimize.sources.registered import materialize

    from compression import resolve  # same model names (and the "minilm" alias) as compression.py

    spec, allow, source = resolve(name)
    float_model, _ = materialize(spec, weights=None, max_bytes=8 << 30, cache_dir=store / "builtin")
    float_model.eval()
    variants = [("float", float_model)]
    recipe_error = None
    if a.recipe:
        try:
            r = optimize_model(model_name=spec.name, recipe=resolve_recipe(a.recipe), engine=a.engine, store=store,
                               allowlist=allow, threads=a.threads, warmup=1, runs=3)
            variants.append((a.recipe, load_artifact(r.artifact_path, allowlist=allow, engine=a.engine).model.eval()))
        except Exception as e:  # noqa: BLE001 - the float spread is still worth reporting
            recipe_error = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    torch.backends.quantized.engine = a.engine
    batches = a.batches or list(spec.latency_batches)
    raw: dict[str, dict[int, list[dict[str, float]]]] = {v: {b: [] for b in batches} for v, _ in variants}
    inputs = {b: spec.make_input(b) for b in batches}
    t0 = time.monotonic()
    for i in range(a.repeats):
        for b in batches:
            for label, model in variants:  # float then recipe, back to back: their ratio shares the conditions
                s = measure_latency(model, inputs[b], warmup=a.warmup, runs=a.runs, threads=a.threads)
                raw[label][b].append({"median_ms": s.median_ms, "p90_ms": s.p90_ms})
        print(f"[{name}] repeat {i + 1}/{a.repeats}", file=sys.stderr)
    out: dict[str, Any] = {"name": name, "spec_source": source, "batches": batches, "recipe": a.recipe,
                           "recipe_error": recipe_error, "seconds": round(time.monotonic() - t0, 1), "series": []}
    for label, _ in variants:
        for b in batches:
            meds = [r["median_ms"] for r in raw[label][b]]
            p90s = [r["p90_ms"] for r in raw[label][b]]
            sm = C.summary(meds)
            out["series"].append({"variant": label, "batch_size": b, "medians_ms": meds, "p90s_ms": p90s,
                                  "median_of_medians_ms": sm["median"], "min_ms": sm["min"], "max_ms": sm["max"],
                                  "cv": sm["cv"], "noise_band": (sm["max"] - sm["min"]) / sm["median"],
                                  "p90": C.summary(p90s)})
    if len(variants) == 2:
        for b in batches:
            sp = [f["median_ms"] / q["median_ms"] for f, q in zip(raw["float"][b], raw[a.recipe][b])]
            sm = C.summary(sp)
            out["series"].append({"variant": f"speed-up float/{a.recipe}", "batch_size": b, "ratios": sp,
                                  "median_of_medians_ms": None, "ratio_median": sm["median"], "min_ratio": sm["min"],
                                  "max_ratio": sm["max"], "cv": sm["cv"],
                                  "noise_band": (sm["max"] - sm["min"]) / sm["median"]})
    return out


def render(doc: dict[str, Any]) -> str:
    args = doc["args"]
    out = ["## Measurement stability", "", f"Command: `{doc['command']}`", "",
           f"Each model's latency measured {args['repeats']} times in one process (each time {args['warmup']} "
           f"warm-up + {args['runs']} timed calls, median, {args['threads']} thread — what a job reports). "
           "Noise band = (max − min) / median of the repeated medians: a difference smaller than this between "
           "two single measurements is not real on this machine. The p10–p90 band is the same without the "
           "extremes (one outlier stretches the noise band). CV = stdev / mean of the medians.", ""]
    def robust(vals: list[float]) -> str:
        # (p90 − p10) / median: the band most repeats fall in, not stretched by one outlier.
        return f"{100 * (C.percentile(vals, 0.9) - C.percentile(vals, 0.1)) / C.percentile(vals, 0.5):.1f} %"

    rows = []
    for m in doc["models"]:
        if m.get("error"):
            rows.append([m["name"], "–", "–", "–", "–", "–", "–", "–", "–", m["error"][:120]])
            continue
        for s in m["series"]:
            if "ratios" in s:
                rows.append([m["name"], s["variant"], s["batch_size"], f"{s['min_ratio']:.3f}×",
                             f"{s['ratio_median']:.3f}×", f"{s['max_ratio']:.3f}×", f"{100 * s['cv']:.1f} %",
                             f"{100 * s['noise_band']:.1f} %", robust(s["ratios"]), ""])
            else:
                rows.append([m["name"], s["variant"], s["batch_size"], C.fmt(s["min_ms"], ".4g"),
                             C.fmt(s["median_of_medians_ms"], ".4g"), C.fmt(s["max_ms"], ".4g"),
                             f"{100 * s['cv']:.1f} %", f"{100 * s['noise_band']:.1f} %", robust(s["medians_ms"]),
                             f"p90 median {C.fmt(s['p90']['median'], '.4g')} ms"])
        if m.get("recipe_error"):
            rows.append([m["name"], m["recipe"], "–", "–", "–", "–", "–", "–", "–", m["recipe_error"][:120]])
    out.append(C.md_table(["model", "what", "batch", "min (ms or ×)", "median", "max", "CV", "noise band",
                           "p10–p90 band", "note"],
                          rows))
    return "\n".join(out) + "\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="mlp", help="comma list of zoo models (minilm resolves like compression.py)")
    p.add_argument("--recipe", default="dynamic-int8", help="also measure this recipe's artifact ('' for none)")
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="default: the spec's latency batch sizes")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--runs", type=int, default=50, help="timed calls per measurement (pipeline default)")
    p.add_argument("--warmup", type=int, default=10, help="warm-up calls per measurement (pipeline default)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--engine", default="fbgemm")
    p.add_argument("--out", type=Path, default=C.DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    run = C.Run(NAME, "stability.py", argv, a)
    store = Path(tempfile.mkdtemp(prefix="mp-bench-stability-"))
    models = []
    try:
        for name in a.models.split(","):
            try:
                models.append(bench_model(name, a, store))
            except Exception as e:  # noqa: BLE001 - report it, keep the other models
                models.append({"name": name, "error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"})
    finally:
        shutil.rmtree(store, ignore_errors=True)
    doc = run.finish({"models": models})
    md = render(doc)
    jp, mp = C.write_outputs(a.out, NAME, doc, md)
    print(md)
    print(f"wrote {jp} and {mp}", file=sys.stderr)
    return 0 if all(not m.get("error") for m in models) else 1


if __name__ == "__main__":
    sys.exit(main())

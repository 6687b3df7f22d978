"""Issue 9's speed goal: a user's ResNet-18 (torchvision, weights from a file) in static int8 vs float.

Command (from the repository root):

    .venv/bin/python benchmarks/own_models.py                  # ResNet-18, 4 classes, 64x64, batch 32
    .venv/bin/python benchmarks/own_models.py --rounds 2 --runs 3   # smoke

The model is built the way the tests build it (tests/own_models_fixtures.py: seeded, trained briefly on
generated images), then ``optimize_model(model_ref=torchvision:resnet18, recipe=static-int8, engine
fbgemm)``. The float artifact and the int8 artifact are both *reloaded* with ``modelpress.load`` and
timed interleaved (float, int8, float, int8 ...: a burst of other load hits both), one thread, on real
eval images. Goal: int8 ≥ 3.5× smaller (bytes of the artifact files) and ≥ 3.5× faster (median) at
batch 32. Writes ``benchmarks/results/own_models.json`` and ``.md``; the goal's verdict is printed with
the numbers, whichever way it comes out.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NAME = "own_models"
GOAL = 3.5


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=10, help="timed calls per variant per round")
    ap.add_argument("--out", type=Path, default=C.DEFAULT_OUT)
    args = ap.parse_args(argv)

    import torch

    sys.path.insert(0, str(C.ROOT))
    import modelpress
    from modelpress.optimize import optimize_model, resolve_recipe
    from modelpress.optimize.measure import time_calls
    from modelpress.optimize.sources import parse_model_ref
    from modelpress.optimize.sources.vision import import_torchvision

    import_torchvision()
    from tests.own_models_fixtures import build_resnet18

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="mp-own-"))
    b = build_resnet18(root)
    ref = parse_model_ref(b.model, weights=str(b.weights), preprocess=b.preprocess,
                          data={"eval": str(b.eval), "calibration": str(b.calibration)},
                          latency_batches=(1, args.batch))
    r = optimize_model(model_ref=ref, recipe=resolve_recipe("static-int8"), engine="fbgemm", store=root / "store",
                       warmup=3, runs=3)
    variants = {"float": modelpress.load(r.float_artifact_path), "static-int8": modelpress.load(r.artifact_path)}
    from modelpress.optimize.sources.data import read_images

    imgs, _, _ = read_images(b.eval, b.preprocess)
    x = imgs[torch.arange(args.batch) % len(imgs)].contiguous()
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.no_grad():
        for _ in range(args.rounds):
            for name, m in variants.items():
                times[name] += time_calls(m, (x,), warmup=2, runs=args.runs, threads=1)
    stats = {k: {**C.summary(v), "p90": C.percentile(v, 0.9)} for k, v in times.items()}
    size = {"float": os.path.getsize(r.float_artifact_path), "static-int8": os.path.getsize(r.artifact_path)}
    size_ratio = size["float"] / size["static-int8"]
    speed_ratio = stats["float"]["median"] / stats["static-int8"]["median"]
    verdict = (f"static int8 ResNet-18 at batch {args.batch}: {size_ratio:.2f}x smaller, {speed_ratio:.2f}x faster "
               f"(goal {GOAL}x each: size {'met' if size_ratio >= GOAL else 'NOT met'}, "
               f"speed {'met' if speed_ratio >= GOAL else 'NOT met'})")
    doc = {"machine": C.machine_info(), "command": C.command_line(__file__, argv or sys.argv[1:]),
           "load_warning": C.load_warning(), "batch": args.batch, "size_bytes": size, "latency_ms": stats,
           "metric": {"name": r.metric_name, "float": r.metric_before, "static-int8": r.metric_after},
           "size_ratio": size_ratio, "speed_ratio": speed_ratio, "verdict": verdict}
    md = "\n".join([f"# {NAME}", "", verdict, "", C.md_table(
        ["variant", "bytes", "median ms", "p90 ms"],
        [[k, size[k], C.fmt(stats[k]["median"]), C.fmt(stats[k]["p90"])] for k in variants]),
        "", C.machine_markdown(doc["machine"]), ""])
    C.write_outputs(args.out, NAME, doc, md)
    print(verdict)
    if doc["load_warning"]:
        print(doc["load_warning"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Issue 9's speed goal: a user's ResNet-18 (torchvision, weights from a file) in static int8 vs float.

Command (from the repository root):

    .venv/bin/python benchmarks/own_models.py                  # ResNet-18, 4 classes, 64x64, batch 32, fbgemm
    .venv/bin/python benchmarks/own_models.py --size 224       # same weights, images resized to 224x224
    .venv/bin/python benchmarks/own_models.py --engine x86     # torch's default x86 engine instead of fbgemm
    .venv/bin/python benchmarks/own_models.py --rounds 2 --runs 3   # smoke
    .venv/bin/python benchmarks/own_models.py --runtime openvino   # the same recipe built in OpenVINO (issue 11)

The model is built the way the tests build it (tests/own_models_fixtures.py: seeded, trained on generated
64x64 images; a larger ``--size`` upsamples the same images in preprocessing, so only the resolution the
network runs at changes), then ``optimize_model(model_ref=torchvision:resnet18, recipe=static-int8)``. The
float artifact and the int8 artifact are both *reloaded* with ``modelpress.load`` and timed interleaved
(float, int8, float, int8 ...: a burst of other load hits both), one thread, on real eval images. Goal: int8
>= 3.5x smaller (bytes of the artifact files) and >= 3.5x faster (median) at batch 32. Prints the ratio of
medians and of p90s, the per-round ratios, the load average before and after, the CPU's int8 features
(AVX-512 VNNI / AVX-VNNI / AMX make int8 kernels much faster than AVX2 alone), and how much of the int8
graph really is int8 (quantize/dequantize nodes left). Writes ``benchmarks/results/own_models.json`` and
``.md``; the goal's verdict is printed with the numbers, whichever way it comes out.
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


def _graph_ops(model) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Counts of the int8 graph's boundary ops: quantize/dequantize left between layers cost real time."""
    counts = {"quantize_per_tensor": 0, "dequantize": 0, "float_modules_with_weights": 0}
    graph = getattr(model, "graph", None)
    for node in graph.nodes if graph is not None else ():
        name = getattr(node.target, "__name__", str(node.target))
        if name in counts:
            counts[name] += 1
    from modelpress.optimize.backends import is_quantized_module

    if not hasattr(model, "modules"):
        return {}  # an ONNX Runtime / OpenVINO artifact: its graph is the runtime's own
    for m in model.modules():
        if any(True for _ in m.parameters(recurse=False)) and not is_quantized_module(m):
            counts["float_modules_with_weights"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=64, help="input resolution the network runs at (pixels)")
    ap.add_argument("--engine", default="fbgemm", choices=["fbgemm", "x86"])
    ap.add_argument("--runtime", default="torch", help="torch | onnxruntime | openvino | auto (the recipe's runtime)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=10, help="timed calls per variant per round")
    ap.add_argument("--out", type=Path, default=C.DEFAULT_OUT)
    args = ap.parse_args(argv)
    load_start = list(os.getloadavg())

    import torch

    sys.path.insert(0, str(C.ROOT))
    import modelpress
    from modelpress.optimize import optimize_model, resolve_recipe
    from modelpress.optimize.backends import quantized_engine
    from modelpress.optimize.measure import time_calls
    from modelpress.optimize.sources import parse_model_ref
    from modelpress.optimize.sources.vision import import_torchvision

    import_torchvision()
    from tests.own_models_fixtures import build_resnet18

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="mp-own-"))
    b = build_resnet18(root)
    pre = {**(b.preprocess or {}), "resize": args.size, "crop": args.size}
    ref = parse_model_ref(b.model, weights=str(b.weights), preprocess=pre,
                          data={"eval": str(b.eval), "calibration": str(b.calibration)},
                          latency_batches=(1, args.batch))
    from modelpress.optimize.recipes import with_runtime

    recipe = with_runtime(resolve_recipe("static-int8"), args.runtime)
    r = optimize_model(model_ref=ref, recipe=recipe, engine=args.engine,
                       store=root / "store", warmup=3, runs=3)
    variants = {"float": modelpress.load(r.float_artifact_path), "static-int8": modelpress.load(r.artifact_path)}
    from modelpress.optimize.sources.data import read_images

    imgs, _, _ = read_images(b.eval, pre)
    x = imgs[torch.arange(args.batch) % len(imgs)].contiguous()
    times: dict[str, list[float]] = {k: [] for k in variants}
    per_round: list[float] = []
    with torch.no_grad(), quantized_engine(args.engine):  # as the worker: engine set to its queue's backend
        for _ in range(args.rounds):
            med = {}
            for name, m in variants.items():
                t = time_calls(m, (x,), warmup=2, runs=args.runs, threads=1)
                times[name] += t
                med[name] = C.summary(t)["median"]
            per_round.append(med["float"] / med["static-int8"])
    stats = {k: {**C.summary(v), "p90": C.percentile(v, 0.9)} for k, v in times.items()}
    size = {"float": os.path.getsize(r.float_artifact_path), "static-int8": os.path.getsize(r.artifact_path)}
    size_ratio = size["float"] / size["static-int8"]
    speed_ratio = stats["float"]["median"] / stats["static-int8"]["median"]
    p90_ratio = stats["float"]["p90"] / stats["static-int8"]["p90"]
    flags = C.cpu_flags()
    int8_isa = sorted(f for f in flags if "vnni" in f or f.startswith("amx") or f in ("avx2", "avx512bw"))
    load_end = list(os.getloadavg())
    verdict = (f"static int8 ResNet-18 ({r.runtime} artifact vs the torch float model) at batch {args.batch}, "
               f"{args.size}x{args.size}, {args.engine}, 1 thread: "
               f"{size_ratio:.2f}x smaller, {speed_ratio:.2f}x faster by median "
               f"({stats['float']['median']:.1f} -> {stats['static-int8']['median']:.1f} ms), {p90_ratio:.2f}x by p90 "
               f"({stats['float']['p90']:.1f} -> {stats['static-int8']['p90']:.1f} ms); "
               f"goal {GOAL}x each: size {'met' if size_ratio >= GOAL else 'NOT met'}, "
               f"speed {'met' if speed_ratio >= GOAL else 'NOT met'}")
    details = (f"per-round speed-ups: {', '.join(f'{v:.2f}' for v in per_round)}; load average (1/5/15 min) "
               f"{'/'.join(f'{v:.2f}' for v in load_start)} at start, {'/'.join(f'{v:.2f}' for v in load_end)} at end; "
               f"CPU int8 features: {', '.join(int8_isa) or 'none known'}; "
               f"int8 graph: {_graph_ops(variants['static-int8'])}")
    doc = {"machine": C.machine_info(), "command": C.command_line("own_models.py", argv or sys.argv[1:]),
           "load_warning": C.load_warning(), "load_average_start": load_start, "load_average_end": load_end,
           "batch": args.batch, "size": args.size, "engine": args.engine, "runtime": r.runtime, "size_bytes": size, "latency_ms": stats,
           "metric": {"name": r.metric_name, "float": r.metric_before, "static-int8": r.metric_after},
           "size_ratio": size_ratio, "speed_ratio": speed_ratio, "speed_ratio_p90": p90_ratio,
           "speed_ratio_per_round": per_round, "cpu_int8_features": int8_isa,
           "int8_graph": _graph_ops(variants["static-int8"]), "verdict": verdict}
    name = NAME if args.runtime == "torch" else f"{NAME}-{args.runtime}"
    md = "\n".join([f"# {name}", "", verdict, "", details, "", C.md_table(
        ["variant", "bytes", "median ms", "p90 ms", "accuracy"],
        [[k, size[k], C.fmt(stats[k]["median"]), C.fmt(stats[k]["p90"]),
          C.fmt(r.metric_before if k == "float" else r.metric_after)] for k in variants]),
        "", C.machine_markdown(doc["machine"]), ""])
    C.write_outputs(args.out, name, doc, md)
    print(verdict)
    print(details)
    if doc["load_warning"]:
        print(doc["load_warning"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

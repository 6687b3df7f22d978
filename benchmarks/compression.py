"""Compression quality: float vs every modelpress recipe vs ONNX Runtime dynamic int8, on the zoo.

Command (from the repository root):

    .venv/bin/python benchmarks/compression.py                        # every zoo model, default recipes
    .venv/bin/python benchmarks/compression.py --models minilm        # the main target only
    .venv/bin/python benchmarks/compression.py --models mlp --recipes dynamic-int8 --max-runs 3 --rounds 1  # smoke

Writes ``benchmarks/results/compression.json`` and ``compression.md`` (``--out DIR`` to change).

For each model: the float model, each modelpress recipe (run through ``optimize_model``, then the saved
artifact is *reloaded* with ``modelpress.load`` and that reloaded model is what is measured: the deployed
file, not the in-memory object), and the peer: ONNX Runtime ``quantize_dynamic`` (per-tensor and
``per_channel=True``, weights QInt8) applied to an ONNX export of the same float model, plus ORT's float
model. All variants get the same inputs (``spec.make_input(b)`` for latency, the spec's held-out eval
inputs for the metric) and one thread (torch ``set_num_threads``; ORT intra-op and inter-op 1).

- size: bytes of the file (modelpress artifact ``.mpz`` or ``.onnx``);
- latency: median and p90 per batch size (default 1 and 32). Variants are timed in interleaved rounds
  (variant A, B, C, then A, B, C again ...) so a burst of other load hits all of them, not one; each
  variant gets as many timed calls as fit in ``--seconds`` per batch size, between ``--min-runs`` and
  ``--max-runs``, after warm-up calls in every round;
- metric: the spec's own (accuracy on labels, or top-1 agreement / cosine against the float outputs),
  computed by ``modelpress.optimize.measure.compute_metric`` for every variant, ORT included.

For the target model (``--target-model``, default ``minilm``) the script states whether our best
artifact within the budget (metric ≥ ``--target-metric``, size ≤ ``--target-size`` × float) is faster
than ORT per-channel int8 at the largest batch size, with the numbers, whichever way it comes out.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NAME = "compression"
PEER = "ort-int8-per-channel"
# Steps that train: minutes per epoch on a 20M-parameter model on 2 cores, so "auto" leaves recipes
# containing them out for models above --train-max-params (name them in --recipes to include them).
TRAINING_STEPS = {"qat", "finetune", "distill"}


# ------------------------------------------------------------------------------- model resolution
MINILM = "minilm_l6_v2"  # the zoo's name (zoo/text.py); "minilm" is accepted as an alias


def canonical(name: str) -> str:
    return MINILM if name == "minilm" else name


def resolve(name: str) -> tuple[Any, tuple[str, ...], str]:
    """(spec, allow-list needed to resolve it again, where it came from)."""
    from modelpress.optimize.sources.registered import resolve_model

    return resolve_model(canonical(name)), (), "zoo"


def default_models() -> list[str]:
    from modelpress.optimize.sources.registered import registered_models

    return registered_models()


def pick_recipes(arg: str, n_params: int, train_max_params: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Recipe names to run and (name, reason) of those left out."""
    import modelpress.optimize.techniques  # noqa: F401 - technique modules register their built-in recipes on import
    from modelpress.optimize.recipes import BUILTIN_RECIPES, resolve_recipe

    if arg != "auto":
        return [r for r in arg.split(",") if r], []
    chosen, skipped = [], []
    for name in BUILTIN_RECIPES:
        kinds = {s.type for s in resolve_recipe(name).steps}
        trains = kinds & TRAINING_STEPS
        if trains and n_params > train_max_params:
            skipped.append((name, f"trains ({', '.join(sorted(trains))}) a {n_params / 1e6:.1f}M-parameter model; "
                                  "name it in --recipes to include it"))
        else:
            chosen.append(name)
    return chosen, skipped


# ------------------------------------------------------------------------------- ONNX Runtime peer
def _inputs_tuple(x: Any) -> tuple[Any, ...]:
    return x if isinstance(x, tuple) else (x,)


def export_onnx(model: Any, spec: Any, path: Path) -> str:
    """Export float ``model`` with a dynamic batch axis; returns which exporter did it.

    modelpress's own ``optimize.onnx_export.export_onnx`` (what a user of modelpress gets) when it is
    there; else ``torch.onnx.export`` (dynamo) here, with the TorchScript exporter as the last resort.
    """
    import torch

    logging.getLogger("torch.onnx").setLevel(logging.WARNING)  # progress lines at INFO, per export
    example = _inputs_tuple(spec.make_input(2))  # batch 2: a size-1 example could be specialised to 1
    m = copy.deepcopy(model).eval()
    try:
        try:
            from modelpress.optimize.onnx_export import export_onnx as mp_export
        except ImportError:
            mp_export = None
        if mp_export is not None:
            mp_export(m, example, path, input_names=spec.extra.get("input_names"))
            return "modelpress.optimize.onnx_export (dynamo)"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                batch = torch.export.Dim("batch", min=1, max=1 << 16)
                torch.onnx.export(m, example, str(path), dynamo=True, dynamic_shapes=tuple({0: batch} for _ in example),
                                  external_data=False, verbose=False)
                return "torch.onnx.export (dynamo)"
            except Exception as e:  # noqa: BLE001 - the TorchScript exporter is the documented fallback
                print(f"  dynamo export failed ({type(e).__name__}: {str(e)[:200]}); trying dynamo=False",
                      file=sys.stderr)
                names = [f"input_{i}" for i in range(len(example))]
                torch.onnx.export(m, example, str(path), dynamo=False, input_names=names, output_names=["output"],
                                  dynamic_axes={n: {0: "batch"} for n in names} | {"output": {0: "batch"}})
                return "torch.onnx.export (TorchScript)"
    finally:
        # Field-notes trap: export restores a module's training flag; measuring a model in training mode lies.
        model.eval()
        assert not any(mm.training for mm in model.modules()), "model left in training mode after export"


def make_ort_module(path: Path, threads: int) -> Any:
    """An ``nn.Module`` around an ORT session, so ORT runs through the very same timing and metric code."""
    import onnxruntime as ort
    import torch
    from torch import nn

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    class OrtModule(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sess = sess
            self.names = [i.name for i in sess.get_inputs()]

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            if len(args) != len(self.names):
                raise RuntimeError(f"the ONNX model takes {self.names}, got {len(args)} inputs")
            # .numpy() and from_numpy share memory: no copies in the timed path.
            out = self.sess.run(None, {n: a.numpy() for n, a in zip(self.names, args)})[0]
            return torch.from_numpy(out)

    return OrtModule().eval()


def ort_quantize(src: Path, dst: Path, *, per_channel: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The peer as its docs show it: quantize_dynamic, int8 weights, default op types (MatMul, Gather, ...).
    # Its "consider pre-processing" warning goes to the root logger on every call: silenced.
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(str(src), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)


# ------------------------------------------------------------------------------- timing
def time_calls(model: Any, args: tuple[Any, ...], *, warmup: int, runs: int, threads: int) -> list[float]:
    """Raw wall times (ms) of ``runs`` calls after ``warmup``: the very loop ``measure_latency`` uses."""
    from modelpress.optimize import measure

    if getattr(model, "training", False):
        raise ValueError("refusing to time a model in training mode")
    return measure.time_calls(model, args, warmup=warmup, runs=runs, threads=threads)


def measure_all(variants: list[dict[str, Any]], spec: Any, batches: Sequence[int], a: argparse.Namespace) -> None:
    """Interleaved rounds over all variants, per batch size; fills ``variant["latency"]``."""
    live = [v for v in variants if v.get("_model") is not None]
    for b in batches:
        args = _inputs_tuple(spec.make_input(b))
        plan = {}
        for v in list(live):
            try:
                probe = time_calls(v["_model"], args, warmup=1, runs=1, threads=a.threads)[0]
            except Exception as e:  # noqa: BLE001 - a variant that cannot run this batch is reported, not fatal
                v.update(status="error", error=f"batch {b}: {type(e).__name__}: {' '.join(str(e).split())[:250]}")
                live.remove(v)
                continue
            total = int(min(a.max_runs, max(a.min_runs, a.seconds * 1000 / max(probe, 1e-3))))
            per_round = max(1, math.ceil(total / a.rounds))
            plan[v["label"]] = (per_round, min(a.warmup, max(1, per_round // 2)))
            v.setdefault("latency", {})[str(b)] = {"times": []}
        rounds: dict[str, list[float]] = {v["label"]: [] for v in live}
        for _ in range(a.rounds):
            for v in live:
                per_round, warm = plan[v["label"]]
                t = time_calls(v["_model"], args, warmup=warm, runs=per_round, threads=a.threads)
                v["latency"][str(b)]["times"] += t
                rounds[v["label"]].append(C.percentile(t, 0.5))
        for v in live:
            t = v["latency"][str(b)].pop("times")
            per_round, warm = plan[v["label"]]
            v["latency"][str(b)] = {"median_ms": C.percentile(t, 0.5), "p90_ms": C.percentile(t, 0.9),
                                    "round_medians_ms": rounds[v["label"]],
                                    "min_ms": min(t), "runs": len(t), "rounds": a.rounds,
                                    "warmup_per_round": warm, "batch_size": b,
                                    "input_shape": [list(x.shape) for x in args], "threads": a.threads}


# ------------------------------------------------------------------------------- one model
def bench_model(name: str, a: argparse.Namespace, store: Path) -> dict[str, Any]:
    import torch

    from modelpress.optimize.artifacts import load_artifact, save_artifact
    from modelpress.optimize.measure import compute_metric, count_params, file_size, predict
    from modelpress.optimize.job import optimize_model
    from modelpress.optimize.recipes import resolve_recipe
    from modelpress.optimize.sources.registered import materialize

    t_model = time.monotonic()
    spec, allow, source = resolve(name)
    float_model, content = materialize(spec, weights=None, max_bytes=8 << 30, cache_dir=store / "builtin")
    float_model.eval()
    data = spec.data()
    n_params = count_params(float_model)
    print(f"[{name}] {n_params:,} parameters, metric {spec.metric}, spec from {source}", file=sys.stderr)
    ref = predict(float_model, data.eval_inputs)

    extra_fns = dict(spec.extra.get("extra_metrics") or {})  # e.g. MiniLM's top-1 retrieval agreement

    def scored(model: Any) -> dict[str, Any]:
        out = predict(model, data.eval_inputs)
        return {"metric": compute_metric(spec.metric, out, labels=data.eval_labels, reference=ref),
                "extra_metrics": {k: float(fn(out, ref)) for k, fn in extra_fns.items()}}

    mdir = store / "bench" / name.replace(":", "_")
    mdir.mkdir(parents=True, exist_ok=True)
    variants: list[dict[str, Any]] = []

    # Float, saved exactly as the pipeline saves its "before" artifact.
    fpath = mdir / "float.mpz"
    manifest = {"model": {"name": spec.name, "version": spec.version, "content_sha256": content},
                "engine": a.engine, "torch_version": torch.__version__, "recipe": {"steps": []}, "steps_meta": []}
    variants.append({"label": "float (torch)", "kind": "float", "format": "modelpress artifact", "status": "ok",
                     "size_bytes": save_artifact(fpath, float_model, manifest), **scored(float_model),
                     "_model": float_model})

    # The peer: ONNX export of the same float model, ORT float and ORT dynamic int8.
    exporter, export_error = None, None
    onnx_float = mdir / "float.onnx"
    try:
        t0 = time.monotonic()
        exporter = export_onnx(float_model, spec, onnx_float)
        print(f"[{name}] ONNX export ({exporter}) {time.monotonic() - t0:.1f} s", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - no peer for this model; say why in the table
        export_error = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        print(f"[{name}] ONNX export failed: {export_error}", file=sys.stderr)
    peer_specs = [("float (ONNX Runtime)", "ort-float", None), ("ORT int8 per-tensor", "ort-int8-per-tensor", False),
                  ("ORT int8 per-channel", PEER, True)]
    for label, key, per_channel in peer_specs:
        v: dict[str, Any] = {"label": label, "key": key, "kind": "ort", "format": "onnx"}
        variants.append(v)
        if export_error:
            v.update(status="error", error=f"ONNX export failed: {export_error}")
            continue
        try:
            path = onnx_float
            if per_channel is not None:
                path = mdir / f"{key}.onnx"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ort_quantize(onnx_float, path, per_channel=per_channel)
            mod = make_ort_module(path, a.threads)
            v.update(status="ok", size_bytes=file_size(path), **scored(mod), _model=mod)
        except Exception as e:  # noqa: BLE001
            v.update(status="error", error=f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")

    # modelpress recipes, through the pipeline; the reloaded artifact is measured.
    recipes, skipped = pick_recipes(a.recipes, n_params, a.train_max_params)
    recipe_refs = recipes + list(a.recipe_file or [])
    for ref_name in recipe_refs:
        v = {"label": f"modelpress {Path(ref_name).stem if ref_name.endswith(('.json', '.yaml', '.yml')) else ref_name}",
             "kind": "modelpress", "recipe": ref_name, "format": "modelpress artifact"}
        variants.append(v)
        print(f"[{name}] recipe {ref_name}", file=sys.stderr)
        try:
            recipe = resolve_recipe(ref_name)
            v["recipe_steps"] = [s.to_dict() for s in recipe.steps]
            t0 = time.monotonic()
            # The pipeline's own latency numbers are reported from the measurement below (interleaved with
            # the peer); they only matter where the job chooses by them (C.job_timing).
            r = optimize_model(model_name=spec.name, recipe=recipe, engine=a.engine, store=store, allowlist=allow,
                               threads=a.threads, **C.job_timing(recipe))
            v["optimize_s"] = round(time.monotonic() - t0, 2)
            if Path(r.artifact_path).suffix == ".mpz":
                loaded = load_artifact(r.artifact_path, allowlist=allow, engine=a.engine).model.eval()
            else:  # a runtime artifact (runtime: onnxruntime / openvino / auto): served as a user serves it
                import modelpress

                loaded = modelpress.load(r.artifact_path, threads=a.threads)
            v["runtime"] = getattr(r, "runtime", None) or "torch"
            v.update(status="ok" if r.status == "succeeded" else r.status, pipeline_status=r.status,
                     pipeline_reason=r.reason, pipeline_metric_after=r.metric_after,
                     size_bytes=file_size(r.artifact_path), **scored(loaded), float_layers=r.float_layers,
                     _model=loaded)
        except Exception as e:  # noqa: BLE001 - one failing recipe must not hide the others' numbers
            v.update(status="error", error=f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
            if a.verbose:
                traceback.print_exc()
    for rname, why in skipped:
        variants.append({"label": f"modelpress {rname}", "kind": "modelpress", "recipe": rname,
                         "status": "skipped", "error": why})

    torch.backends.quantized.engine = a.engine
    print(f"[{name}] timing {sum(1 for v in variants if '_model' in v)} variants at batch {a.batches}", file=sys.stderr)
    measure_all(variants, spec, a.batches, a)
    for v in variants:
        v.pop("_model", None)
    add_ratios(variants, a.batches)
    return {"name": name, "spec_name": spec.name, "spec_source": source, "metric": spec.metric,
            "eval_description": data.description, "extra_metric_names": sorted(extra_fns), "params": n_params,
            "onnx_exporter": exporter, "onnx_export_error": export_error, "peer": PEER, "skipped_recipes": [r for r, _ in skipped],
            "variants": variants, "seconds": round(time.monotonic() - t_model, 1)}


def add_ratios(variants: list[dict[str, Any]], batches: Sequence[int]) -> None:
    """Ratios, each ">1 = better": float/ours for size and time; peer/ours likewise."""
    flt = variants[0]
    peer = next((v for v in variants if v.get("key") == PEER and v.get("status") == "ok"), None)
    for v in variants:
        if v.get("size_bytes") is None:
            continue
        v["size_fraction_of_float"] = C.ratio(v["size_bytes"], flt["size_bytes"])
        v["smaller_than_float"] = C.ratio(flt["size_bytes"], v["size_bytes"])
        v["metric_drop"] = flt["metric"] - v["metric"] if v.get("metric") is not None else None
        v["faster_than_float"] = {}
        v["vs_peer"] = {"smaller": C.ratio(peer["size_bytes"], v["size_bytes"]) if peer else None, "faster": {}}
        for b in batches:
            mine = v.get("latency", {}).get(str(b), {}).get("median_ms")
            v["faster_than_float"][str(b)] = C.ratio(flt.get("latency", {}).get(str(b), {}).get("median_ms"), mine)
            pm = peer.get("latency", {}).get(str(b), {}).get("median_ms") if peer else None
            v["vs_peer"]["faster"][str(b)] = C.ratio(pm, mine)


def judge_target(model: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    """Our best modelpress artifact within budget vs ORT per-channel int8 at the largest batch size."""
    b = str(max(a.batches))
    peer = next((v for v in model["variants"] if v.get("key") == PEER), None)
    cands, why_not = [], []
    for v in model["variants"]:
        if v["kind"] != "modelpress":
            continue
        if v.get("status") in ("error", "skipped") or v.get("metric") is None or b not in v.get("latency", {}):
            why_not.append(f"{v['label']}: {v.get('status')} ({(v.get('error') or '')[:120]})")
            continue
        frac, metric = v["size_fraction_of_float"], v["metric"]
        reasons = []
        if metric < a.target_metric:
            reasons.append(f"{model['metric']} {metric:.4f} < {a.target_metric}")
        if frac > a.target_size:
            reasons.append(f"size {frac:.4f}× float > {a.target_size}×")
        if reasons:
            why_not.append(f"{v['label']}: " + "; ".join(reasons) + f" (b{b} {v['latency'][b]['median_ms']:.4g} ms)")
        else:
            cands.append(v)
    from _common import cpu_flags

    out: dict[str, Any] = {"model": model["name"], "batch_size": int(b), "metric_budget": a.target_metric,
                           # 8-bit activation kernels are exact only with VNNI: the verdict is per CPU.
                           "cpu_int8_features": sorted(cpu_flags() & {"avx2", "avx512_vnni", "avx_vnni", "amx_int8",
                                                                         "amx_bf16", "avx512_bf16"}),
                           "size_budget_fraction_of_float": a.target_size, "peer": PEER,
                           "not_qualifying": why_not}
    peer_ok = peer is not None and peer.get("status") == "ok"
    if peer_ok:
        out["peer_numbers"] = {"metric": peer["metric"], "size_fraction_of_float": peer["size_fraction_of_float"],
                               "median_ms": peer["latency"][b]["median_ms"], "size_bytes": peer["size_bytes"]}
    if not cands:
        out.update(met=False, best=None, verdict=(
            f"NOT MET: no modelpress artifact of {model['name']} reaches {model['metric']} ≥ {a.target_metric} "
            f"with size ≤ {a.target_size}× float" + (f"; ORT per-channel int8: {model['metric']} "
            f"{peer['metric']:.4f}, {peer['size_fraction_of_float']:.4f}× float, b{b} "
            f"{peer['latency'][b]['median_ms']:.4g} ms" if peer_ok else "")))
        return out
    best = min(cands, key=lambda v: v["latency"][b]["median_ms"])
    mine = best["latency"][b]["median_ms"]
    out["best"] = {"label": best["label"], "metric": best["metric"], "size_fraction_of_float": best["size_fraction_of_float"],
                   "median_ms": mine, "size_bytes": best["size_bytes"]}
    if not peer_ok:
        out.update(met=None, verdict=f"best within budget: {best['label']} (b{b} {mine:.4g} ms); no ORT peer to compare")
        return out
    pm = peer["latency"][b]["median_ms"]
    met = mine < pm
    # A win counts as clear only when ours was faster in every interleaved round (no overlap of the
    # per-round medians); otherwise the difference is within this run's noise.
    ours_r, peer_r = best["latency"][b].get("round_medians_ms", []), peer["latency"][b].get("round_medians_ms", [])
    clear = bool(ours_r and peer_r) and (max(ours_r) < min(peer_r) if met else min(ours_r) > max(peer_r))
    out.update(met=met, clear=clear, speed_vs_peer=pm / mine, verdict=(
        f"{'MET' if met else 'NOT MET'}: best within budget is {best['label']} — {model['metric']} {best['metric']:.4f}, "
        f"{best['size_fraction_of_float']:.4f}× float, b{b} {mine:.4g} ms vs ORT per-channel int8 {pm:.4g} ms "
        f"({pm / mine:.2f}× {'faster' if met else 'as fast'}; ORT {model['metric']} {peer['metric']:.4f}, "
        f"{peer['size_fraction_of_float']:.4f}× float). "
        + (f"The difference held in each of the {len(ours_r)} interleaved rounds." if clear else
           f"Not a clear difference: the per-round medians overlap (ours {', '.join(f'{x:.4g}' for x in ours_r)} ms; "
           f"ORT {', '.join(f'{x:.4g}' for x in peer_r)} ms).")))
    return out


# ------------------------------------------------------------------------------- markdown
def render(doc: dict[str, Any]) -> str:
    batches = doc["args"]["batches"]
    out = ["## Compression quality: modelpress recipes vs ONNX Runtime dynamic int8", "",
           f"Command: `{doc['command']}`", "",
           "Size is the file's bytes (modelpress artifact, or .onnx). Latency: median / p90 ms over the timed "
           f"calls, {doc['args']['threads']} thread, variants timed in {doc['args']['rounds']} interleaved rounds. "
           "`×` columns are *better-by* factors (>1 = smaller / faster than float or than the peer, "
           "ONNX Runtime int8 per-channel). The modelpress rows measure the saved artifact, reloaded.", ""]
    if doc.get("target"):
        t = doc["target"]
        out += [f"**Target ({t['model']}, batch {t['batch_size']}, {t['metric_budget']} metric budget, size ≤ "
                f"{t['size_budget_fraction_of_float']}× float; CPU int8 features "
                f"{', '.join(t.get('cpu_int8_features') or doc['machine']['cpu_int8_features']) or 'none'}):** {t['verdict']}", ""]
        if t.get("not_qualifying"):
            out += ["Not within budget:", ""] + [f"- {w}" for w in t["not_qualifying"]] + [""]
    for m in doc["models"]:
        if m.get("error"):
            out += [f"### {m['name']}", "", f"error: {m['error']}", ""]
            continue
        out += [f"### {m['name']} — {m['params']:,} parameters, metric {m['metric']}, "
                f"ONNX exporter {m['onnx_exporter'] or 'failed'}", "",
                f"Eval data: {m['eval_description']}. Spec from {m['spec_source']}.", ""]
        head = ["variant", "status", "bytes", "size × float"]
        for b in batches:
            head += [f"b{b} median / p90 ms", f"b{b} × float"]
        extra = m.get("extra_metric_names", [])
        head += [m["metric"], *extra, "size × peer"] + [f"b{b} × peer" for b in batches] + ["note"]
        rows = []
        for v in m["variants"]:
            row = [v["label"], v.get("status", "")]
            if v.get("size_bytes") is None:
                rows.append(row + ["–"] * (len(head) - 3) + [(v.get("error") or "")[:160]])
                continue
            row += [C.fmt(v["size_bytes"]), C.fx(v.get("smaller_than_float"))]
            for b in batches:
                lat = v.get("latency", {}).get(str(b))
                row += [f"{C.fmt(lat['median_ms'])} / {C.fmt(lat['p90_ms'])}" if lat else "–",
                        C.fx(v.get("faster_than_float", {}).get(str(b)))]
            row += [C.fmt(v.get("metric"), ".4f"), *(C.fmt(v.get("extra_metrics", {}).get(k), ".4f") for k in extra),
                    C.fx(v.get("vs_peer", {}).get("smaller"))]
            row += [C.fx(v.get("vs_peer", {}).get("faster", {}).get(str(b))) for b in batches]
            note = v.get("pipeline_reason") or ""
            pm = v.get("pipeline_metric_after")
            if pm is not None and v.get("metric") is not None and abs(pm - v["metric"]) > 1e-3:
                note += ("; " if note else "") + f"pipeline measured {pm:.4f} before saving"
            if v.get("float_layers"):
                note += ("; " if note else "") + f"float: {', '.join(v['float_layers'])[:100]}"
            rows.append(row + [note])
        out.append(C.md_table(head, rows))
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=None, help="comma list; default: every registered zoo model plus minilm")
    p.add_argument("--recipes", default="auto",
                   help="comma list of recipe names, or 'auto': every built-in recipe (training ones only on "
                        "models up to --train-max-params)")
    p.add_argument("--recipe-file", action="append", help="extra recipe file (.json/.yaml), repeatable")
    p.add_argument("--train-max-params", type=int, default=5_000_000)
    p.add_argument("--batches", default="1,32", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--engine", default="fbgemm")
    p.add_argument("--min-runs", type=int, default=10)
    p.add_argument("--max-runs", type=int, default=50)
    p.add_argument("--seconds", type=float, default=20.0, help="timing budget per variant per batch size")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--warmup", type=int, default=10, help="at most this many warm-up calls per round")
    p.add_argument("--target-model", default="minilm")
    p.add_argument("--target-metric", type=float, default=0.99)
    p.add_argument("--target-size", type=float, default=0.26, help="largest size as a fraction of float")
    p.add_argument("--store", type=Path, help="artifact store to keep (default: a temporary folder, deleted)")
    p.add_argument("--out", type=Path, default=C.DEFAULT_OUT)
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    if a.min_runs > a.max_runs:
        a.min_runs = a.max_runs
    return a


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    run = C.Run(NAME, "compression.py", argv, a)
    models = [canonical(m) for m in a.models.split(",")] if a.models else default_models()
    target_name = canonical(a.target_model)
    store = a.store or Path(tempfile.mkdtemp(prefix="mp-bench-compression-"))
    results = []
    try:
        for name in models:
            try:
                results.append(bench_model(name, a, store))
            except Exception as e:  # noqa: BLE001 - one model failing must not lose the others
                traceback.print_exc()
                results.append({"name": name, "error": f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"})
    finally:
        if a.store is None:
            shutil.rmtree(store, ignore_errors=True)
    target = next((judge_target(m, a) for m in results if m["name"] == target_name and not m.get("error")), None)
    doc = run.finish({"models": results, "target": target})
    jp, mp = C.write_outputs(a.out, NAME, doc, render(doc))
    print(render(doc))
    print(f"wrote {jp} and {mp}", file=sys.stderr)
    return 0 if all(not m.get("error") for m in results) else 1


if __name__ == "__main__":
    sys.exit(main())

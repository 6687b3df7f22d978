"""Jobs in a runtime and ``runtime: auto`` through the pipeline, on the built-in MLP and digits CNN (real runs)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import modelpress
from modelpress.optimize.job import optimize_model
from modelpress.optimize.recipes import Recipe
from modelpress.optimize.choose import NoCandidateError, choose
from modelpress.optimize.job import run_model
from modelpress.optimize.runtimes.registry import get_runtime

FAST = dict(threads=1, warmup=2, runs=5)


def _recipe(runtime: str, steps: list[dict], **kw) -> Recipe:
    return Recipe.from_dict({"name": f"t-{runtime}", "steps": steps, "runtime": runtime, **kw})


def test_an_onnxruntime_job_writes_a_onnx_artifact_whose_reload_gives_the_measured_numbers(mlp, tmp_path: Path) -> None:
    spec, data, model = mlp
    r = optimize_model(model_name="mlp", recipe=_recipe("onnxruntime", [{"type": "quantize_dynamic"}]),
                       engine="fbgemm", store=tmp_path, **FAST)
    assert r.status == "succeeded" and r.runtime == "onnxruntime"
    assert set(r.runtime_versions) == {"onnxruntime", "onnx", "torch"}
    art = Path(r.artifact_path)
    assert art.suffix == ".onnx" and art.stat().st_size == r.size_after_bytes
    assert r.size_after_bytes < 0.3 * r.size_before_bytes
    assert r.extra["reload_check"]["equal"] is True
    # The step leaves per_channel open, so both weight granularities are built; the row is the chosen one.
    assert [c.get("variant") for c in r.extra["candidates"]] == [{"per_channel": True}, {"per_channel": False}]
    (cand,) = [c for c in r.extra["candidates"] if c.get("chosen")]
    assert cand["bytes"] == r.size_after_bytes
    # The chosen candidate's timing is its evidence; the reported one is a fresh interleaved timing (issue 20).
    assert cand["latency"] != r.latency_after and all(e["interleaved"] for e in r.latency_after + r.latency_before)
    # "before" is the torch float model; the runtime's own float numbers are recorded beside it.
    assert cand["runtime_float"]["bytes"] > r.size_after_bytes and cand["runtime_float"]["metric"] > 0.99
    assert [s["batch_size"] for s in r.latency_after] == [1, 64]
    # modelpress.load serves it; its outputs agree with the float model as the recorded metric says.
    fn = modelpress.load(str(art))
    x = data.eval_inputs
    with torch.inference_mode():
        agree = float((fn(x).argmax(-1) == model(x).argmax(-1)).float().mean())
    assert r.metric_name == "top1_agreement" and abs(agree - r.metric_after) < 0.02
    # The stored result is found again by its key (which includes the runtime versions).
    again = optimize_model(model_name="mlp", recipe=_recipe("onnxruntime", [{"type": "quantize_dynamic"}]),
                           engine="fbgemm", store=tmp_path, **FAST)
    assert again.reused and again.artifact_key == r.artifact_key


def _with_eval(spec, data, rows: slice):
    labels = data.eval_labels[rows] if data.eval_labels is not None else None
    d = dataclasses.replace(data, eval_inputs=data.eval_inputs[rows], eval_labels=labels)
    return dataclasses.replace(spec, data=lambda: d)


def test_the_fallback_chooses_layers_on_validation_or_calibration_rows_never_on_eval_rows(mlp, tmp_path: Path) -> None:
    spec, data, model = mlp
    # A budget int8 cannot meet untouched (zero drop in top-1 agreement): the fallback must run.
    recipe = _recipe("onnxruntime", [{"type": "quantize_dynamic"}], budget={"max_drop": 0.0, "max_float_layers": 1,
                                                                       "sensitivity_samples": 256})
    runs = []
    half = len(data.eval_inputs) // 2
    for i, ev in enumerate([slice(0, half), slice(half, None)]):
        r = run_model(model_name="mlp", spec=_with_eval(spec, data, ev), recipe=recipe,
                                engine="fbgemm", store=tmp_path / str(i), float_model=model, content="c" * 64,
                                **FAST)
        runs.append(r)
    fb = [r.extra["fallback"] for r in runs]
    # The zoo MLP holds validation rows apart from eval (issue 10 item 9): choices are made there.
    assert fb[0]["sensitivity"]["rows"] in ("validation", "calibration")
    assert runs[0].extra["selection"]["rows"] == fb[0]["sensitivity"]["rows"] != "eval"
    # Different eval rows, same decisions: the ranking, the trials and the layers kept float.
    assert fb[0]["sensitivity"]["ranking"] == fb[1]["sensitivity"]["ranking"]
    assert fb[0]["trials"] == fb[1]["trials"]
    assert runs[0].float_layers == runs[1].float_layers
    assert set(fb[0]["sensitivity"]["ranking"]) == {"fc1", "fc2"} and len(fb[0]["trials"]) == 2
    assert runs[0].extra["candidates"][0]["metric"] != runs[1].extra["candidates"][0]["metric"] or \
        runs[0].metric_before != runs[1].metric_before  # the eval rows did differ


def test_validation_rows_are_used_for_choices_when_the_data_has_them(mlp, tmp_path: Path) -> None:
    spec, data, model = mlp
    data_v = dataclasses.replace(data, val_inputs=data.calib_inputs[:128])
    spec_v = dataclasses.replace(spec, data=lambda: data_v)
    r = run_model(model_name="mlp", spec=spec_v, recipe=_recipe("onnxruntime", [{"type": "quantize_dynamic"}]),
                            engine="fbgemm", store=tmp_path, float_model=model, content="d" * 64, **FAST)
    assert r.extra["selection"]["rows"] == "validation" and r.extra["selection"]["samples"] == 128


def _loose_dynamic_job(mlp, store: Path, runtime: str, objective: str, content: str):
    """A dynamic int8 job on the MLP whose 20 % budget every candidate keeps: the objective alone decides."""
    spec, _, model = mlp
    return run_model(model_name="mlp", spec=spec, recipe=_recipe(
        runtime, [{"type": "quantize_dynamic"}], objective=objective, budget={"max_drop": 0.2}),
        engine="fbgemm", store=store / objective, float_model=model, content=content * 64, **FAST)


def test_auto_builds_every_runtime_records_each_and_picks_by_the_objective(mlp, tmp_path: Path) -> None:
    spec, data, model = mlp
    picks = {}
    for objective in ("latency_b1", "size"):
        r = _loose_dynamic_job(mlp, tmp_path, "auto", objective, "e")
        cands = r.extra["candidates"]
        # ONNX Runtime offers both weight granularities for a step that leaves per_channel open, and
        # OpenVINO both places to dequantize its int8 weights (per call, or once at load).
        assert [c["runtime"] for c in cands] == ["torch", "onnxruntime", "onnxruntime", "openvino", "openvino"]
        assert [c["variant"] for c in cands[3:]] == [{"weight_decompression": "per_call"},
                                                     {"weight_decompression": "at_load"}]
        assert all(c["status"] == "built" for c in cands), cands
        for c in cands:
            assert c["bytes"] > 0 and c["metric"] > 0.8 and {s["batch_size"] for s in c["latency"]} == {1, 64}
        # What each runtime decided on this host is recorded beside its timings (torch has nothing to add).
        ov_cand = cands[-1]
        assert ov_cand["execution"]["threads"] == 1 and ov_cand["execution"]["inference_precision"] in {"f32", "bf16"}
        # Folded at load: the file holds int8 weights as the per-call one does, the plugin runs float kernels.
        linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
        assert ov_cand["quantization"]["weights_folded_at_load"] == linears
        assert abs(ov_cand["bytes"] - cands[3]["bytes"]) < 0.01 * cands[3]["bytes"]
        assert {k.split()[1] for k in ov_cand["execution"]["weighted_ops"]} <= {"f32", "bf16"}
        assert ov_cand["runtime_float"]["execution"]["weighted_ops"], ov_cand["runtime_float"]
        assert all(c["execution"]["providers"] == ["CPUExecutionProvider"] for c in cands[1:3])
        assert "execution" not in cands[0]
        assert r.extra.get("execution") == next(c for c in cands if c.get("chosen")).get("execution")
        keeping = [c for c in cands if c["within_budget_on_selection"]]
        key = (lambda c: c["bytes"]) if objective == "size" else (lambda c: c["latency"][0]["median_ms"])
        best = min(keeping, key=key)
        assert r.runtime == best["runtime"] and r.size_after_bytes == best["bytes"]
        assert Path(r.artifact_path).suffix == get_runtime(best["runtime"]).suffix
        assert r.extra["objective"] == objective and r.extra["runtime_requested"] == "auto"
        picks[objective] = r
    # modelpress.load serves the winner whatever its runtime.
    x = data.eval_inputs[:4]
    assert modelpress.load(picks["size"].artifact_path)(x).shape == (4, model(x).shape[1])


def test_a_runtime_builds_each_variant_the_step_leaves_open_and_keeps_the_best_at_the_objective_within_budget(
        mlp, tmp_path: Path) -> None:
    spec, data, model = mlp
    for objective in ("latency_b1", "latency_bN"):
        r = _loose_dynamic_job(mlp, tmp_path, "onnxruntime", objective, "v")
        cands = r.extra["candidates"]
        assert [c["variant"] for c in cands] == [{"per_channel": True}, {"per_channel": False}]
        assert all(c["status"] == "built" and c["within_budget_on_selection"] for c in cands), cands
        # Exported and measured as float once: both variants carry the same float numbers.
        assert cands[0]["runtime_float"] == cands[1]["runtime_float"]
        # The two graphs really differ, and each records what it was built with.
        assert [c["quantization"]["per_channel"] for c in cands] == [True, False]
        assert cands[0]["bytes"] != cands[1]["bytes"]
        pick = 0 if objective == "latency_b1" else -1
        best = min(cands, key=lambda c: (sorted(c["latency"], key=lambda x: x["batch_size"])[pick]["median_ms"],
                                         c["bytes"]))
        assert [c.get("chosen", False) for c in cands] == [c is best for c in cands]
        assert r.size_after_bytes == best["bytes"] and r.steps_meta[-1]["per_channel"] == best["variant"]["per_channel"]
    # A step that pins the granularity builds that one only.
    pinned = run_model(model_name="mlp", spec=spec, recipe=_recipe(
        "onnxruntime", [{"type": "quantize_dynamic", "per_channel": False}]),
        engine="fbgemm", store=tmp_path / "pinned", float_model=model, content="v" * 64, **FAST)
    (only,) = pinned.extra["candidates"]
    assert "variant" not in only and pinned.steps_meta[-1]["per_channel"] is False


def test_a_single_runtime_job_fails_with_its_own_error_only_when_no_variant_can_be_built(
        mlp, tmp_path: Path, monkeypatch) -> None:
    from modelpress.errors import UserInputError

    spec, data, model = mlp
    ort_rt = type(get_runtime("onnxruntime"))
    real = ort_rt.quantize

    def per_tensor_breaks(self, exported, qcfg, *a, **kw):
        if qcfg.per_channel is False:
            raise UserInputError("per-tensor is broken here")
        return real(self, exported, qcfg, *a, **kw)

    monkeypatch.setattr(ort_rt, "quantize", per_tensor_breaks)
    recipe = _recipe("onnxruntime", [{"type": "quantize_dynamic"}], budget={"max_drop": 0.2})
    r = run_model(model_name="mlp", spec=spec, recipe=recipe, engine="fbgemm", store=tmp_path / "a",
                            float_model=model, content="w" * 64, **FAST)
    assert [c["status"] for c in r.extra["candidates"]] == ["built", "skipped"]
    assert "per-tensor is broken here" in r.extra["candidates"][1]["reason"]
    assert r.status == "succeeded" and r.steps_meta[-1]["per_channel"] is True

    def all_break(self, exported, qcfg, *a, **kw):
        raise UserInputError(f"per_channel={qcfg.per_channel} is broken here")

    monkeypatch.setattr(ort_rt, "quantize", all_break)
    with pytest.raises(UserInputError, match="per_channel=True is broken here"):
        run_model(model_name="mlp", spec=spec, recipe=recipe, engine="fbgemm", store=tmp_path / "b",
                            float_model=model, content="w" * 64, **FAST)


def test_auto_skips_a_candidate_that_cannot_be_built_and_fails_only_when_none_can(mlp, tmp_path, monkeypatch) -> None:
    spec, data, model = mlp
    ov = type(get_runtime("openvino"))
    monkeypatch.setattr(ov, "is_available", lambda self: "openvino is not installed")
    recipe = _recipe("auto", [{"type": "quantize_dynamic"}])
    r = run_model(model_name="mlp", spec=spec, recipe=recipe, engine="fbgemm", store=tmp_path / "a",
                            float_model=model, content="f" * 64, **FAST)
    skipped = [c for c in r.extra["candidates"] if c["status"] == "skipped"]
    assert {c["runtime"] for c in skipped} == {"openvino"} and "openvino is not installed" in skipped[0]["reason"]
    assert r.status == "succeeded" and r.runtime in ("torch", "onnxruntime")
    for name in ("torch", "onnxruntime"):
        monkeypatch.setattr(type(get_runtime(name)), "is_available", lambda self, n=name: f"{n} is broken here")
    with pytest.raises(NoCandidateError, match="no runtime could build.*torch: .*torch is broken here"):
        run_model(model_name="mlp", spec=spec, recipe=recipe, engine="fbgemm", store=tmp_path / "b",
                            float_model=model, content="f" * 64, **FAST)


def test_the_winner_keeps_the_budget_before_it_is_fast() -> None:
    fast_bad = {"runtime": "a", "status": "built", "within_budget_on_selection": False, "bytes": 1,
                "selection_metric": 0.5, "latency": [{"batch_size": 1, "median_ms": 0.1}]}
    slow_ok = {**fast_bad, "runtime": "b", "within_budget_on_selection": True, "selection_metric": 0.99,
               "latency": [{"batch_size": 1, "median_ms": 9.0}]}
    assert choose([fast_bad, slow_ok], "latency_bN")["runtime"] == "b"
    assert choose([fast_bad, {**slow_ok, "within_budget_on_selection": False}], "size")["runtime"] == "b"


def test_a_fallback_estimated_to_take_too_long_is_skipped_with_the_estimate_and_the_job_is_rejected(
        mlp, tmp_path, monkeypatch) -> None:
    import modelpress.optimize.candidates as candidates

    spec, data, model = mlp
    monkeypatch.setattr(candidates, "FALLBACK_MAX_SECONDS", 0)
    recipe = _recipe("onnxruntime", [{"type": "quantize_dynamic", "per_channel": True}],
                     budget={"max_drop": 0.0, "max_float_layers": 1, "sensitivity_samples": 256})
    r = run_model(model_name="mlp", spec=spec, recipe=recipe, engine="fbgemm", store=tmp_path,
                            float_model=model, content="g" * 64, **FAST)
    (cand,) = r.extra["candidates"]
    assert cand["fallback"]["skipped"].startswith("estimated") and "> 0 s" in cand["fallback"]["skipped"]
    assert r.status == "rejected" and Path(r.artifact_path).parent.name == "rejected" and r.float_layers == []


def test_near_tied_candidates_are_timed_again_side_by_side_and_the_run_off_decides(tmp_path: Path) -> None:
    import time
    from types import SimpleNamespace

    import modelpress.optimize.choose as rp

    # What the first, separate timings said: "flattered" looked 2 % faster at batch 4, but is in fact slower.
    truth = {"flattered": 0.004, "honest": 0.002, "far": 0.002}

    def cand(name: str, first_ms: float, ok: bool = True) -> dict:
        return {"runtime": "torch", "status": "built", "within_budget_on_selection": ok, "bytes": 10,
                "selection_metric": 0.9, "path": name,
                "latency": [{"batch_size": 1, "median_ms": 0.5}, {"batch_size": 4, "median_ms": first_ms}]}

    def load(rt, path):
        return lambda x: time.sleep(truth[str(path)]) or x

    job = SimpleNamespace(load=load, runs=10, warmup=5, threads=1, lock_dir=tmp_path, timings=[], log=lambda m: None,
                          spec=SimpleNamespace(make_input=lambda b: torch.randn(b, 3)))
    cands = [cand("flattered", 3.92), cand("honest", 4.0), cand("far", 9.0), cand("honest", 1.0, ok=False)]
    rec = rp.runoff(job, cands, "latency_bN", margin=0.10)
    # Only the budget-keeping candidates within 10 % of the best go in; the others keep their first numbers.
    assert rec["batch_size"] == 4 and rec["contenders"] == ["0: torch", "1: torch"]
    assert (rec["rounds"], rec["runs_per_round"], rec["warmup_per_round"]) == (5, 3, 1)
    for c, first in zip(cands[:2], (3.92, 4.0)):
        entry = c["latency"][1]
        assert entry["interleaved"] and entry["runs"] == 15 and len(entry["round_medians_ms"]) == 5
        assert c["latency_first"]["median_ms"] == first and c["latency"][0]["median_ms"] == 0.5
    assert "latency_first" not in cands[2] and "latency_first" not in cands[3]
    assert rp.choose(cands, "latency_bN") is cands[1]
    assert [t["phase"] for t in job.timings] == ["runoff"]
    # No run-off for size, with no margin, or with fewer than two near-tied candidates.
    assert rp.runoff(job, cands, "size") is None and rp.runoff(job, cands, "latency_bN", margin=0) is None
    assert rp.runoff(job, [cand("honest", 4.0), cand("far", 9.0)], "latency_bN", margin=0.10) is None


def test_each_search_levels_fastest_candidate_joins_the_run_off_however_far_its_first_timing(tmp_path: Path) -> None:
    import time
    from types import SimpleNamespace

    import modelpress.optimize.choose as rp

    # The shallow level was timed in a quiet minute and looked 25 % faster than the deep one; it is slower.
    truth = {"shallow": 0.004, "deep": 0.002, "deep-far": 0.002, "shallow-slow": 0.004}

    def cand(name: str, level: float, first_ms: float) -> dict:
        return {"runtime": "openvino", "status": "built", "within_budget_on_selection": True, "bytes": 10,
                "selection_metric": 0.9, "path": name, "level": level,
                "latency": [{"batch_size": 1, "median_ms": 0.5}, {"batch_size": 32, "median_ms": first_ms}]}

    job = SimpleNamespace(load=lambda rt, path: (lambda x: time.sleep(truth[str(path)]) or x), runs=10, warmup=5,
                          threads=1, lock_dir=tmp_path, timings=[], log=lambda m: None,
                          spec=SimpleNamespace(make_input=lambda b: torch.randn(b, 3)))
    cands = [cand("shallow", 0.22, 79.0), cand("deep", 0.4, 104.0), cand("deep-far", 0.4, 130.0),
             cand("shallow-slow", 0.22, 120.0)]
    rec = rp.runoff(job, cands, "latency_bN", margin=0.10)
    # Each level's fastest, not the others far behind their own level's.
    assert rec["contenders"] == ["0: openvino", "1: openvino"]
    assert cands[0]["latency"][1]["interleaved"] and cands[1]["latency"][1]["interleaved"]
    assert "latency_first" not in cands[2] and "latency_first" not in cands[3]
    assert rp.choose(cands, "latency_bN") is cands[1]
    # One level: the margin alone decides, as before.
    assert rp.runoff(job, [cand("shallow", 0.22, 79.0), cand("shallow-slow", 0.22, 104.0)], "latency_bN",
                     margin=0.10) is None


def test_a_real_job_runs_off_its_near_tied_variants_and_records_it(mlp, tmp_path: Path, monkeypatch) -> None:
    import modelpress.optimize.choose as rp

    monkeypatch.setattr(rp, "RUNOFF_MARGIN", 100.0)  # every budget-keeping candidate counts as near-tied
    r = _loose_dynamic_job(mlp, tmp_path, "onnxruntime", "latency_bN", "r")
    cands, runoff = r.extra["candidates"], r.extra["runoff"]
    assert runoff["batch_size"] == 64 and len(runoff["contenders"]) == 2
    entries = [next(s for s in c["latency"] if s["batch_size"] == 64) for c in cands]
    assert all(e["interleaved"] and e["runs"] == 5 * 3 for e in entries)
    best = min(range(2), key=lambda i: (entries[i]["median_ms"], cands[i]["bytes"]))
    assert cands[best].get("chosen") and r.size_after_bytes == cands[best]["bytes"]
    # The run-off chose; the row reports a fresh timing taken after it, never the run-off's figure.
    reported = next(s for s in r.latency_after if s["batch_size"] == 64)
    assert reported != entries[best] and reported["interleaved"]
    phases = [p["phase"] for p in r.extra["timing"]["phases"]]
    assert "runoff" in phases and phases[-1] == "before+after"


def test_the_reported_latency_is_timed_after_every_choice_beside_the_float_model(mlp, tmp_path: Path) -> None:
    r = _loose_dynamic_job(mlp, tmp_path, "auto", "latency_b1", "f")
    phases = r.extra["timing"]["phases"]
    final = phases[-1]
    assert final["phase"] == "before+after"
    # Every candidate's timing (and any run-off) ended before the reported timing began.
    assert all(p["end"] <= final["start"] for p in phases[:-1]) and len(phases) > 2
    chosen = next(c for c in r.extra["candidates"] if c.get("chosen"))
    for before, after, evidence in zip(r.latency_before, r.latency_after, chosen["latency"]):
        assert before["batch_size"] == after["batch_size"] == evidence["batch_size"]
        # Timed in the same rounds: as many rounds and runs on each side.
        assert before["rounds"] == after["rounds"] and before["runs"] == after["runs"] == FAST["runs"]
        assert len(before["round_medians_ms"]) == len(after["round_medians_ms"]) == before["rounds"]
        assert after != evidence

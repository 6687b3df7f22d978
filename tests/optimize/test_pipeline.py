"""optimize_model end to end: accuracy budget with measured-sensitivity fallback, rejection, reloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
import torch.ao.nn.quantized.dynamic as nnqd
from torch import nn

import modelpress
from modelpress.optimize.backends import is_quantized_module, quantized_engine
from modelpress.errors import UserInputError
from modelpress.optimize.measure import compute_metric, predict
from modelpress.optimize.job import optimize_model
from modelpress.optimize.result import OptimizeResult
from modelpress.optimize.recipes import Recipe
from modelpress.optimize.spec import ModelSpec, TaskData

FAST = {"warmup": 1, "runs": 3}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built-in weights are cached per session (shared with the other test files): train each model once.
    cache = tmp_path_factory.getbasetemp() / "builtin-cache"
    cache.mkdir(exist_ok=True)
    s = tmp_path_factory.mktemp("store")
    (s / "builtin").symlink_to(cache, target_is_directory=True)
    return s


# ----------------------------------------------------------------- a model with one fragile layer
def outlier_mlp() -> nn.Sequential:
    """3-layer MLP; layer "2" has one huge weight on an always-zero input, so per-tensor int8 wrecks it."""
    m = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    return m.eval()


def _outlier_pretrained(model: nn.Module, cache_dir: Path | None) -> None:
    torch.manual_seed(0)
    fresh = outlier_mlp()
    with torch.no_grad():
        fresh[0].weight[0].zero_()
        fresh[0].bias[0] = -1.0
        fresh[2].weight[0, 0] = 200.0
    model.load_state_dict(fresh.state_dict())


def _x(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))


def _mean_abs(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    return float((outputs - reference).abs().mean())


def outlier_spec() -> ModelSpec:
    return ModelSpec(
        name="outlier_mlp", version=1, build=outlier_mlp, metric="top1_agreement", make_input=lambda b: _x(b, 100 + b),
        data=lambda: TaskData(eval_inputs=_x(1024, 1), eval_labels=None, calib_inputs=_x(256, 2),
                              train_inputs=_x(1024, 3), description="N(0,1), seeds 1/2/3"),
        latency_batches=(1, 64), pretrained=_outlier_pretrained,
        extra={"eval_batch_size": 128, "extra_metrics": {"mean_abs_diff": _mean_abs}},
    )


OUTLIER = f"{__name__}:outlier_spec"
ALLOW = (__name__,)


def _reloaded_metric(result: OptimizeResult, allowlist: tuple[str, ...] = ()) -> float:
    """The metric of the artifact as a user reloads it, on the held-out data the worker measured."""
    from modelpress.optimize.sources.registered import resolve_model

    spec = resolve_model(result.model_name if not allowlist else OUTLIER, allowlist=allowlist)
    data = spec.data()
    loaded = modelpress.load(result.artifact_path, allowlist=allowlist)
    ref = predict(modelpress.load(result.float_artifact_path, allowlist=allowlist), data.eval_inputs,
                  batch_size=int(spec.extra.get("eval_batch_size", 256)))
    with quantized_engine(result.engine):
        out = predict(loaded, data.eval_inputs, batch_size=int(spec.extra.get("eval_batch_size", 256)))
    return compute_metric(spec.metric, out, labels=data.eval_labels, reference=ref)


# ----------------------------------------------------------------- fallback
def test_dynamic_budget_fallback_keeps_the_measured_most_sensitive_layer_float(store):
    recipe = Recipe.from_dict({"name": "dyn-budget", "budget": {"max_drop": 0.02},
                               "steps": [{"type": "quantize_dynamic", "per_channel": False}]})
    r = optimize_model(model_name=OUTLIER, allowlist=ALLOW, recipe=recipe, engine="fbgemm", store=store, **FAST)
    fb = r.extra["fallback"]
    assert fb["trials"][0]["float_layers"] == [] and not fb["trials"][0]["within_budget"]
    assert fb["trials"][0]["metric"] < 0.98, "all-int8 must break the budget for this test to mean anything"
    assert fb["sensitivity"]["layers"][0]["name"] == "2"
    assert r.status == "succeeded" and r.reason is None
    assert r.float_layers == ["2"] and r.steps_meta[0]["float_modules"] == ["2"]
    assert fb["chosen_float_layers"] == 1 and fb["trials"][-1]["within_budget"]
    # Chosen on calibration rows (this spec has no validation rows); reported once, on eval.
    assert fb["chosen_on"] == {"rows": "calibration", "samples": 256, "metric": "top1_agreement", "before": 1.0}
    assert fb["trials"][-1]["metric"] >= 0.98 and r.metric_after == fb["eval_metric"] >= 0.98
    assert Path(r.artifact_path).parent.name == "artifacts"
    assert r.extra["reload_check"]["equal"] is True
    assert r.extra["metrics_after"]["mean_abs_diff"] > 0
    assert r.extra["model"] == {"eval_batch_size": 128}  # JSON-able spec extras only (no callables)
    loaded = modelpress.load(r.artifact_path, allowlist=ALLOW)
    assert type(loaded[2]) is nn.Linear and isinstance(loaded[0], nnqd.Linear) and isinstance(loaded[4], nnqd.Linear)
    assert _reloaded_metric(r, ALLOW) == r.metric_after


def test_static_budget_fallback_keeps_the_outlier_layer_float_and_reloads(store):
    # Static int8 of the other layers costs ~2 points of agreement on these random inputs: budget 0.03.
    recipe = Recipe.from_dict({"name": "static-budget", "budget": {"max_drop": 0.03},
                               "steps": [{"type": "quantize_static", "per_channel": False}]})
    r = optimize_model(model_name=OUTLIER, allowlist=ALLOW, recipe=recipe, engine="fbgemm", store=store, **FAST)
    assert r.extra["fallback"]["trials"][0]["metric"] < 0.9
    assert r.extra["fallback"]["sensitivity"]["layers"][0]["name"] == "2"
    assert r.status == "succeeded"
    assert r.float_layers == ["2"]
    loaded = modelpress.load(r.artifact_path, allowlist=ALLOW)
    # Layer "2" stays float (FX still fuses it with its ReLU into a float LinearReLU); its neighbours are int8.
    assert type(loaded.get_submodule("2")) is torch.ao.nn.intrinsic.LinearReLU
    assert not is_quantized_module(loaded.get_submodule("2"))
    assert isinstance(loaded.get_submodule("0"), nniq.LinearReLU)
    assert _reloaded_metric(r, ALLOW) == r.metric_after


def test_budget_that_cannot_be_met_is_rejected_with_numbers_and_the_best_effort_is_kept(store):
    recipe = Recipe.from_dict({"name": "impossible", "budget": {"max_drop": 0.0, "max_float_layers": 1},
                               "steps": [{"type": "quantize_dynamic", "per_channel": False}]})
    r = optimize_model(model_name="mlp", recipe=recipe, engine="fbgemm", store=store, **FAST)
    assert r.status == "rejected"
    assert "top1_agreement fell from 1.0000 to" in r.reason and "max_float_layers=1" in r.reason
    assert Path(r.artifact_path).parent.name == "rejected" and Path(r.artifact_path).is_file()
    assert not (store / "artifacts" / Path(r.artifact_path).name).exists()
    fb = r.extra["fallback"]
    trials = fb["trials"]
    assert len(trials) == 2 and not any(t["within_budget"] for t in trials)
    assert fb["chosen_on"]["rows"] == "validation"  # the MLP's held-apart rows, not its eval rows
    kept = max(trials, key=lambda t: t["metric"])  # the best effort on the validation rows is what was kept
    assert r.float_layers == sorted(kept["float_layers"]) and r.metric_after == fb["eval_metric"]
    assert _reloaded_metric(r) == r.metric_after


def test_fallback_off_rejects_without_measuring_sensitivity(store):
    recipe = Recipe.from_dict({"name": "no-fallback", "budget": {"max_drop": 0.0, "max_float_layers": 0},
                               "steps": [{"type": "quantize_dynamic", "per_channel": False}]})
    r = optimize_model(model_name="mlp", recipe=recipe, engine="fbgemm", store=store, **FAST)
    assert r.status == "rejected" and "fallback" not in r.extra and r.float_layers == []


# ----------------------------------------------------------------- static / QAT through the pipeline
@pytest.mark.parametrize("step", [{"type": "quantize_static"}, {"type": "qat", "epochs": 1}])
def test_static_and_qat_artifacts_reload_with_the_measured_outputs(store, step):
    recipe = Recipe.from_dict({"name": f"digits-{step['type']}", "steps": [step], "budget": {"max_drop": 0.02}})
    r = optimize_model(model_name="digits_cnn", recipe=recipe, engine="fbgemm", store=store, **FAST)
    assert r.status == "succeeded" and r.metric_after >= r.metric_before - 0.02
    assert r.size_after_bytes < r.size_before_bytes / 3
    assert r.extra["reload_check"] == {"samples": 240, "max_abs_diff": 0.0, "equal": True}  # 240 eval rows
    loaded = modelpress.load(r.artifact_path)
    assert sum(isinstance(m, nniq.ConvReLU2d) for m in loaded.modules()) == 3
    assert _reloaded_metric(r) == r.metric_after


def test_dynamic_embedding_and_lstm_artifact_reloads_with_the_measured_outputs(store):
    recipe = Recipe.from_dict({"name": "seq-dyn", "budget": {"max_drop": 0.02},
                               "steps": [{"type": "quantize_dynamic", "quantize_embeddings": True}]})
    r = optimize_model(model_name="seq_lstm", recipe=recipe, engine="fbgemm", store=store, **FAST)
    loaded = modelpress.load(r.artifact_path)
    assert isinstance(loaded.embedding, nnq.Embedding) and isinstance(loaded.rnn, nnqd.LSTM)
    assert r.size_before_bytes / r.size_after_bytes > 3
    assert _reloaded_metric(r) == r.metric_after


# ----------------------------------------------------------------- bookkeeping
def test_result_round_trips_through_json_and_a_second_call_reuses_it(store):
    recipe = Recipe.from_dict({"name": "reuse", "steps": [{"type": "quantize_dynamic"}]})
    first = optimize_model(model_name="mlp", recipe=recipe, engine="fbgemm", store=store, **FAST)
    d = json.loads(json.dumps(first.to_dict()))
    assert OptimizeResult.from_dict(d) == first
    second = optimize_model(model_name="mlp", recipe=recipe, engine="fbgemm", store=store, **FAST)
    assert second.reused and second.artifact_path == first.artifact_path
    assert second.metric_after == first.metric_after


def test_a_changed_builder_or_cpu_never_answers_from_the_old_artifact(store, monkeypatch):
    import modelpress.optimize.artifacts as artifacts

    recipe = Recipe.from_dict({"name": "reuse", "steps": [{"type": "quantize_dynamic"}]})
    first = optimize_model(model_name="mlp", recipe=recipe, engine="fbgemm", store=store, **FAST)
    # As after an upgrade that edits the optimize package: same model, recipe, engine and torch.
    monkeypatch.setattr(artifacts, "build_fingerprint", lambda: "0" * 64)
    upgraded = optimize_model(model_name="mlp", recipe=recipe, engine="fbgemm", store=store, **FAST)
    assert not upgraded.reused and upgraded.artifact_key != first.artifact_key
    # As on a host whose int8 kernels differ (an AVX2-only CPU beside a VNNI one sharing the store).
    other = ("avx2",) if "avx512_vnni" in artifacts.cpu_build_features() else ("avx2", "avx512_vnni")
    monkeypatch.setattr(artifacts, "cpu_build_features", lambda: other)
    other_cpu = optimize_model(model_name="mlp", recipe=recipe, engine="fbgemm", store=store, **FAST)
    assert not other_cpu.reused and other_cpu.artifact_key not in (first.artifact_key, upgraded.artifact_key)
    again = optimize_model(model_name="mlp", recipe=recipe, engine="fbgemm", store=store, **FAST)
    assert again.reused and again.artifact_key == other_cpu.artifact_key


def test_onnx_export_of_an_int8_result_is_refused_before_any_work(store, monkeypatch):
    import modelpress.optimize.sources.resolve as resolve

    def boom(*a, **k):  # the refusal must come before the model is even built
        raise AssertionError("the model was resolved")

    monkeypatch.setattr(resolve, "resolve", boom)
    recipe = Recipe.from_dict({"name": "x", "steps": [{"type": "quantize_dynamic"}]})
    with pytest.raises(UserInputError, match="cannot export a torch.ao int8 model.*onnx_export='float'"):
        optimize_model(model_name="mlp", recipe=recipe, engine="fbgemm", store=store, onnx_export="result")


# ----------------------------------------------------------------- choices never see the reported rows (issue 10, item 9)
VAL_EVAL_X, VAL_CALIB_X, VAL_X = _x(1024, 1), _x(256, 2), _x(512, 4)


def outlier_val_spec() -> ModelSpec:
    """The outlier MLP with validation rows; its tensors are module constants so a test can spot them."""
    return ModelSpec(
        name="outlier_mlp_val", version=1, build=outlier_mlp, metric="top1_agreement",
        make_input=lambda b: _x(b, 100 + b), latency_batches=(1,), pretrained=_outlier_pretrained,
        data=lambda: TaskData(eval_inputs=VAL_EVAL_X, eval_labels=None, calib_inputs=VAL_CALIB_X, val_inputs=VAL_X,
                              description="N(0,1), seeds 1 (eval) / 2 (calibration) / 4 (validation)"),
        extra={"eval_batch_size": 128},
    )


def test_the_fallback_chooses_on_validation_rows_and_never_predicts_on_the_eval_rows_while_choosing(store, monkeypatch):
    import modelpress.optimize.choose as choose
    import modelpress.optimize.runtimes.torch_recipe as torch_recipe
    import modelpress.optimize.techniques.sensitivity as sensitivity

    choosing = {"on": False}
    seen: list[tuple[bool, bool]] = []  # (while choosing, on the eval rows) for every prediction

    def spy(real):
        def predict(model, inputs, **kw):
            seen.append((choosing["on"], inputs is VAL_EVAL_X))
            return real(model, inputs, **kw)
        return predict

    real_of, real_fallback = choose.Selection.of, torch_recipe.keep_sensitive_float

    def of(*a, **k):
        choosing["on"] = True  # from the first look at the budget ...
        return real_of(*a, **k)

    def fallback(*a, **k):
        try:
            return real_fallback(*a, **k)
        finally:
            choosing["on"] = False  # ... until the trial is chosen

    monkeypatch.setattr(torch_recipe, "predict", spy(torch_recipe.predict))
    monkeypatch.setattr(choose, "predict", spy(choose.predict))
    monkeypatch.setattr(sensitivity, "predict", spy(sensitivity.predict))
    monkeypatch.setattr(choose.Selection, "of", staticmethod(of))
    monkeypatch.setattr(torch_recipe, "keep_sensitive_float", fallback)
    recipe = Recipe.from_dict({"name": "dyn-val", "budget": {"max_drop": 0.02},
                               "steps": [{"type": "quantize_dynamic", "per_channel": False}]})
    r = optimize_model(model_name=f"{__name__}:outlier_val_spec", allowlist=ALLOW, recipe=recipe, engine="fbgemm",
                       store=store, **FAST)

    fb = r.extra["fallback"]
    assert fb["chosen_on"] == {"rows": "validation", "samples": 512, "metric": "top1_agreement", "before": 1.0}
    assert r.extra["budget_check"]["rows"] == "validation" and not r.extra["budget_check"]["within_budget"]
    assert any(c for c, _ in seen), "the spy saw no prediction while choosing"
    assert not any(c and e for c, e in seen), "the eval rows were predicted on while the fallback was chosen"
    assert any(e and not c for c, e in seen)  # the reported metric is computed on eval, after the choice
    # The trials' numbers are the validation rows' (recomputed here), the reported one the eval rows'.
    loaded = modelpress.load(r.artifact_path, allowlist=ALLOW)
    float_model = modelpress.load(r.float_artifact_path, allowlist=ALLOW)
    with quantized_engine("fbgemm"):
        # At the batch the job evaluates in: dynamic int8 scales activations per batch.
        bs = r.metric_eval_batch_size
        on_val = compute_metric("top1_agreement", predict(loaded, VAL_X, batch_size=bs), labels=None,
                                reference=predict(float_model, VAL_X, batch_size=bs))
    assert fb["trials"][-1]["metric"] == on_val and fb["trials"][-1]["within_budget"]
    assert r.metric_after == fb["eval_metric"] == _reloaded_metric_of(r, VAL_EVAL_X)


def _reloaded_metric_of(r: OptimizeResult, x: torch.Tensor) -> float:
    loaded = modelpress.load(r.artifact_path, allowlist=ALLOW)
    ref = predict(modelpress.load(r.float_artifact_path, allowlist=ALLOW), x, batch_size=128)
    with quantized_engine(r.engine):
        return compute_metric("top1_agreement", predict(loaded, x, batch_size=128), labels=None, reference=ref)


def test_zoo_specs_hold_validation_rows_apart_from_their_eval_rows():
    from modelpress.optimize.sources.registered import resolve_model

    for name in ("mlp", "digits_cnn", "seq_lstm", "seq_gru", "minilm_l6_v2"):
        data = resolve_model(name).data()
        assert data.val_inputs is not None, name
        val = data.val_inputs if isinstance(data.val_inputs, tuple) else (data.val_inputs,)
        ev = data.eval_inputs if isinstance(data.eval_inputs, tuple) else (data.eval_inputs,)
        val_rows = {tuple(torch.cat([t[i].flatten().float() for t in val]).tolist()) for i in range(len(val[0]))}
        eval_rows = {tuple(torch.cat([t[i].flatten().float() for t in ev]).tolist()) for i in range(len(ev[0]))}
        assert not val_rows & eval_rows, f"{name}: validation rows also in eval"
        assert (data.val_labels is not None) == (data.eval_labels is not None), name


# ----------------------------------------------------------------- the metric's batch (issue 10, item 10)
def test_the_row_records_the_eval_batch_and_the_metric_one_row_at_a_time(store):
    recipe = Recipe.from_dict({"name": "b1", "steps": [{"type": "quantize_dynamic"}]})  # no budget: plain figures
    r = optimize_model(model_name="mlp", recipe=recipe, engine="fbgemm", store=store, reuse=False, **FAST)
    assert r.metric_eval_batch_size == 256 and r.metric_b1_rows == 512
    from modelpress.optimize.sources.registered import resolve_model

    x = resolve_model("mlp").data().eval_inputs[:512]
    loaded, float_model = modelpress.load(r.artifact_path), modelpress.load(r.float_artifact_path)
    with quantized_engine("fbgemm"):
        one_by_one = predict(loaded, x, batch_size=1)
        batched = predict(loaded, x, batch_size=256)
    ref = predict(float_model, x, batch_size=256)
    assert r.metric_after_b1 == compute_metric("top1_agreement", one_by_one, labels=None, reference=ref)
    assert r.metric_before_b1 == 1.0
    # Dynamic int8 depends on the batch: the two evaluations do differ for this model.
    assert not torch.equal(one_by_one, batched)


# ----------------------------------------------------------------- honest latency (issue 20, item 10)
def test_before_and_after_latency_are_timed_together_on_the_reloaded_artifact_after_the_choice(store, monkeypatch):
    import modelpress.optimize.measure as measure
    import modelpress.optimize.plan as pl

    timed: list[tuple[str, object]] = []
    reloaded: list[object] = []
    real_time, real_load = measure.interleaved_latency, pl.load_artifact

    def spy_time(models, inputs, **kw):  # type: ignore[no-untyped-def]
        timed.extend(models.items())
        return real_time(models, inputs, **kw)

    def spy_load(*a, **kw):  # type: ignore[no-untyped-def]
        loaded = real_load(*a, **kw)
        reloaded.append(loaded.model)
        return loaded

    monkeypatch.setattr(measure, "interleaved_latency", spy_time)
    monkeypatch.setattr(pl, "load_artifact", spy_load)
    recipe = Recipe.from_dict({"name": "lat", "steps": [{"type": "quantize_dynamic"}], "budget": {"max_drop": 0.5}})
    r = optimize_model(model_name="mlp", recipe=recipe, engine="fbgemm", store=store, reuse=False, warmup=2, runs=6)
    assert [p["phase"] for p in r.extra["timing"]["phases"]] == ["before+after"]
    # One interleaved timing per latency batch, of the float model and of the artifact as reloaded from disk.
    assert [name for name, _ in timed] == ["before", "after"] * len(r.latency_after)
    assert len(reloaded) == 1 and all(m is reloaded[0] for name, m in timed if name == "after")
    for before, after in zip(r.latency_before, r.latency_after):
        assert before["interleaved"] and after["interleaved"] and before["rounds"] == after["rounds"] == 2
        assert before["runs"] == after["runs"] == 6 and len(after["round_medians_ms"]) == 2


# ----------------------------------------------------------------- immutable artifacts (issue 10, item 8)
_DRIFT = {"calls": 0}


def _drifting_pretrained(model: nn.Module, cache_dir: Path | None) -> None:
    # The same built-in id each time, other weights each call: a factory whose code changed, or a
    # nightly re-measure; the key stays the same while the bytes differ.
    _DRIFT["calls"] += 1
    torch.manual_seed(_DRIFT["calls"])
    model.load_state_dict(outlier_mlp().state_dict())


def drifting_spec() -> ModelSpec:
    return ModelSpec(name="drifting", version=1, build=outlier_mlp, metric="top1_agreement",
                     make_input=lambda b: _x(b, 100 + b), latency_batches=(1,), pretrained=_drifting_pretrained,
                     data=lambda: TaskData(eval_inputs=_x(256, 1), eval_labels=None, calib_inputs=_x(64, 2)))


def test_a_later_run_of_the_same_key_writes_new_objects_and_never_rewrites_the_old_ones(tmp_path):
    from modelpress.store import file_sha256

    recipe = Recipe.from_dict({"name": "drift", "steps": [{"type": "quantize_dynamic"}]})
    kw = dict(model_name=f"{__name__}:drifting_spec", allowlist=ALLOW, recipe=recipe, engine="fbgemm",
              store=tmp_path, **FAST)
    first = optimize_model(**kw)
    first_bytes = Path(first.artifact_path).read_bytes()
    second = optimize_model(**kw, reuse=False)
    assert first.artifact_key == second.artifact_key
    assert first.artifact_path != second.artifact_path and first.float_artifact_path != second.float_artifact_path
    for r in (first, second):
        for path, sha in ((r.artifact_path, r.artifact_sha256), (r.float_artifact_path, r.float_artifact_sha256)):
            assert Path(path).name == f"{sha}.mpz" and file_sha256(path) == sha
    assert Path(first.artifact_path).read_bytes() == first_bytes  # the first row still describes its bytes
    third = optimize_model(**kw)  # the key's index now names the second result
    assert third.reused and third.artifact_path == second.artifact_path


def test_a_corrupt_artifact_of_the_right_size_is_detected_and_replaced_by_running_again(tmp_path):
    from modelpress.store import IntegrityError, file_sha256

    recipe = Recipe.from_dict({"name": "corrupt", "steps": [{"type": "quantize_dynamic"}]})
    kw = dict(model_name="mlp", recipe=recipe, engine="fbgemm", store=tmp_path, **FAST)
    first = optimize_model(**kw)
    p = Path(first.artifact_path)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    p.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="corrupt"):
        modelpress.load(str(p))
    again = optimize_model(**kw)  # not answered from the corrupt object
    assert not again.reused and again.artifact_path == first.artifact_path
    assert file_sha256(p) == again.artifact_sha256 == p.stem
    modelpress.load(str(p))

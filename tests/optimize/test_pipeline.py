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
from modelpress.optimize.errors import UserInputError
from modelpress.optimize.measure import compute_metric, predict
from modelpress.optimize.pipeline import OptimizeResult, optimize_model
from modelpress.optimize.recipes import Recipe
from modelpress.optimize.zoo import ModelSpec, TaskData

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
    from modelpress.optimize.zoo import resolve_model

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
    assert r.metric_after == fb["trials"][-1]["metric"] >= 0.98
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
    trials = r.extra["fallback"]["trials"]
    assert len(trials) == 2 and not any(t["within_budget"] for t in trials)
    assert r.metric_after == max(t["metric"] for t in trials)  # the best effort is what was kept
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
    assert r.extra["reload_check"] == {"samples": 256, "max_abs_diff": 0.0, "equal": True}
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


def test_onnx_export_of_an_int8_result_is_refused_before_any_work(store, monkeypatch):
    import modelpress.optimize.pipeline as pipeline

    import modelpress.optimize.sources.resolve as resolve

    def boom(*a, **k):  # the refusal must come before the model is even built
        raise AssertionError("the model was resolved")

    monkeypatch.setattr(resolve, "resolve", boom)
    recipe = Recipe.from_dict({"name": "x", "steps": [{"type": "quantize_dynamic"}]})
    with pytest.raises(UserInputError, match="cannot export a torch.ao int8 model.*onnx_export='float'"):
        optimize_model(model_name="mlp", recipe=recipe, engine="fbgemm", store=store, onnx_export="result")

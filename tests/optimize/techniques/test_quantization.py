"""Quantization step handlers on real zoo models: static FX PTQ, QAT, dynamic (Linear/LSTM/GRU/Embedding).

Every test checks that the technique did something observable (module types, bytes, kernel choice) and
that artifacts reload to the same outputs.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
import torch.ao.nn.quantized.dynamic as nnqd
from torch import nn

import modelpress
from modelpress.optimize.artifacts import save_artifact
from modelpress.optimize.backends import (
    FullRangeDynamicLinear,
    PortableDynamicGRU,
    PortableDynamicLSTM,
    QuantizationInputError,
    TorchAOQuantization,
    full_range_activations_exact,
    quantized_engine,
)
from modelpress.errors import RecipeError, UserInputError
from modelpress.optimize.measure import compute_metric, measure_latency, predict
from modelpress.optimize.recipes import DynamicQuantConfig, QATConfig, Recipe, StaticQuantConfig
from modelpress.optimize.techniques.registry import StepContext, apply_step
from modelpress.optimize.sources.registered import materialize, resolve_model
from modelpress.optimize.spec import ModelSpec


def _load(name: str, cache: Path) -> tuple[ModelSpec, nn.Module]:
    spec = resolve_model(name)
    model, _ = materialize(spec, weights=None, max_bytes=1 << 31, cache_dir=cache)
    return spec, model


@pytest.fixture(scope="module")
def digits(builtin_cache: Path) -> tuple[ModelSpec, nn.Module, object]:
    spec, model = _load("digits_cnn", builtin_cache)
    return spec, model, spec.data()


def _ctx(spec: ModelSpec, data: object, engine: str = "fbgemm", model: nn.Module | None = None) -> StepContext:
    return StepContext(spec=spec, data=data, engine=engine, reference=model)  # type: ignore[arg-type]


def _save_and_load(tmp_path: Path, spec: ModelSpec, model: nn.Module, cfg: object, meta: dict, engine: str) -> tuple[int, nn.Module]:
    recipe = Recipe.from_dict({"name": "t", "steps": [cfg.to_dict()]})  # type: ignore[attr-defined]
    manifest = {"model": {"name": spec.name, "version": spec.version, "content_sha256": "x"}, "engine": engine,
                "torch_version": torch.__version__, "recipe": recipe.to_dict(), "steps_meta": [meta]}
    path = tmp_path / "a.mpz"
    size = save_artifact(path, model, manifest)
    return size, modelpress.load(str(path))


def _float_bytes(tmp_path: Path, model: nn.Module) -> int:
    return save_artifact(tmp_path / "f.mpz", model, {"recipe": {"steps": []}, "steps_meta": []})


# ----------------------------------------------------------------------------------- static (FX)
def test_static_int8_changes_conv_modules_to_quantized_and_folds_batchnorm(digits, tmp_path):
    spec, model, data = digits
    out = apply_step(model, StaticQuantConfig(), _ctx(spec, data))
    q = out.model
    convs = [m for m in q.modules() if isinstance(m, nniq.ConvReLU2d)]
    assert len(convs) == 3, "every conv-bn-relu block should become one int8 ConvReLU2d"
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) for m in q.modules())
    assert isinstance(q.get_submodule("classifier.1"), nniq.LinearReLU)
    assert isinstance(q.get_submodule("classifier.3"), nnq.Linear)
    assert out.meta["fused_modules"] == {"features.0": "ConvReLU2d", "features.3": "ConvReLU2d",
                                         "features.6": "ConvReLU2d", "classifier.1": "LinearReLU"}
    assert out.meta["batchnorm_folded"] == 3
    assert out.meta["weight_qscheme"] == "per_channel_symmetric"
    assert q.get_submodule("features.0").weight().qscheme() == torch.per_channel_affine
    # The float input is untouched (handlers get a copy).
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert _save_and_load(tmp_path, spec, q, StaticQuantConfig(), out.meta, "fbgemm")[0] < _float_bytes(tmp_path, model) / 3


def test_static_int8_records_the_calibration_batches_it_ran(digits, monkeypatch):
    spec, model, data = digits
    calls: list[int] = []
    real = TorchAOQuantization.prepare_static

    def counting(self, *args, **kwargs):  # count the batches that really reach the observers
        prepared = real(self, *args, **kwargs)
        prepared.register_forward_pre_hook(lambda mod, inp: calls.append(int(inp[0].shape[0])))
        return prepared

    monkeypatch.setattr(TorchAOQuantization, "prepare_static", counting)
    out = apply_step(model, StaticQuantConfig(calibration_batches=3, calibration_batch_size=20), _ctx(spec, data))
    assert calls == [20, 20, 20]
    assert (out.meta["calibration_batches"], out.meta["calibration_samples"]) == (3, 60)
    calls.clear()
    # More batches than the calibration set holds: capped at what exists, and the request is kept too.
    out = apply_step(model, StaticQuantConfig(calibration_batches=100, calibration_batch_size=32), _ctx(spec, data))
    n = data.calib_inputs.shape[0]
    assert out.meta["calibration_batches"] == math.ceil(n / 32)
    assert out.meta["calibration_batches_requested"] == 100
    assert out.meta["calibration_samples"] == n
    assert len(calls) == math.ceil(n / 32) and sum(calls) == n


def test_static_int8_keeps_digits_accuracy_and_is_faster_at_batch_64(digits):
    spec, model, data = digits
    q = apply_step(model, StaticQuantConfig(), _ctx(spec, data)).model
    with quantized_engine("fbgemm"):
        acc_f = compute_metric("accuracy", predict(model, data.eval_inputs), labels=data.eval_labels, reference=None)
        acc_q = compute_metric("accuracy", predict(q, data.eval_inputs), labels=data.eval_labels, reference=None)
        x = spec.make_input(64)
        t_f = measure_latency(model, x, warmup=3, runs=15).median_ms
        t_q = measure_latency(q, x, warmup=3, runs=15).median_ms
    assert acc_f > 0.97
    assert acc_q >= acc_f - 0.01
    assert t_q < t_f / 1.3, f"static int8 should be clearly faster at batch 64 ({t_q:.2f} vs {t_f:.2f} ms)"


@pytest.mark.parametrize("engine", ["fbgemm", "qnnpack"])
def test_static_int8_artifact_reloads_with_identical_outputs(digits, tmp_path, engine):
    spec, model, data = digits
    cfg = StaticQuantConfig(calibration_batches=4)
    out = apply_step(model, cfg, _ctx(spec, data, engine))
    _, loaded = _save_and_load(tmp_path, spec, out.model, cfg, out.meta, engine)
    with quantized_engine(engine):
        assert torch.equal(predict(out.model, data.eval_inputs), predict(loaded, data.eval_inputs))
    assert type(loaded.get_submodule("features.0")) is nniq.ConvReLU2d


def test_static_int8_per_channel_follows_the_recipe_on_both_engines(digits):
    spec, model, data = digits
    # qnnpack's default mapping is per-tensor; the engine packs per-channel weights, so the recipe wins.
    q = apply_step(model, StaticQuantConfig(per_channel=True), _ctx(spec, data, "qnnpack")).model
    assert q.get_submodule("features.3").weight().qscheme() == torch.per_channel_affine
    out = apply_step(model, StaticQuantConfig(per_channel=False), _ctx(spec, data, "fbgemm"))
    assert out.model.get_submodule("features.3").weight().qscheme() == torch.per_tensor_affine
    assert out.meta["weight_qscheme"] == "per_tensor_symmetric"
    assert out.meta["activation_reduce_range"] is True  # fbgemm's default activation observer, kept


def test_static_keep_float_leaves_the_named_block_float_and_reloads(digits, tmp_path):
    spec, model, data = digits
    cfg = StaticQuantConfig(keep_float=("features.0",), calibration_batches=2)
    out = apply_step(model, cfg, _ctx(spec, data))
    first = out.model.get_submodule("features.0")
    assert not type(first).__module__.startswith("torch.ao.nn.intrinsic.quantized")
    assert isinstance(out.model.get_submodule("features.3"), nniq.ConvReLU2d)
    assert out.meta["float_modules"] == ["features.0"]
    assert "features.0" not in out.meta["quantized_modules"]
    _, loaded = _save_and_load(tmp_path, spec, out.model, cfg, out.meta, "fbgemm")
    with quantized_engine("fbgemm"):
        assert torch.equal(predict(out.model, data.eval_inputs), predict(loaded, data.eval_inputs))


def test_static_rejects_unknown_keep_float_names_with_the_known_names(digits):
    spec, model, data = digits
    with pytest.raises(UserInputError, match="keep_float names modules that do not exist: nope.*features"):
        apply_step(model, StaticQuantConfig(keep_float=("nope",)), _ctx(spec, data))


def test_static_refuses_a_model_fx_cannot_trace_and_points_to_dynamic(digits):
    spec, _, data = digits

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: not symbolically traceable
                return self.fc(x.flatten(1))
            return -self.fc(x.flatten(1))

    with pytest.raises(QuantizationInputError, match="FX-traceable.*quantize_dynamic"):
        apply_step(Branchy().eval(), StaticQuantConfig(), _ctx(spec, data))


# ----------------------------------------------------------------------------------- QAT
def test_qat_fine_tunes_with_fake_quant_then_converts_to_int8(digits, tmp_path):
    spec, model, data = digits
    cfg = QATConfig(epochs=1, lr=1e-4)
    out = apply_step(model, cfg, _ctx(spec, data))
    n_train = data.train_inputs.shape[0]
    assert out.meta["optimizer_steps"] == math.ceil(n_train / cfg.batch_size)
    assert out.meta["target"] == "labels"
    assert set(out.meta["fused_modules"].values()) == {"ConvBnReLU2d", "LinearReLU"}
    assert out.meta["activation"] == "FusedMovingAvgObsFakeQuantize"
    assert sum(isinstance(m, nniq.ConvReLU2d) for m in out.model.modules()) == 3
    assert not any(isinstance(m, nn.BatchNorm2d) for m in out.model.modules())
    with quantized_engine("fbgemm"):
        acc_f = compute_metric("accuracy", predict(model, data.eval_inputs), labels=data.eval_labels, reference=None)
        acc_q = compute_metric("accuracy", predict(out.model, data.eval_inputs), labels=data.eval_labels, reference=None)
    assert acc_q >= acc_f - 0.02
    # Training changed the weights: the QAT model is not the PTQ model.
    ptq = apply_step(model, StaticQuantConfig(), _ctx(spec, data)).model
    with quantized_engine("fbgemm"):
        assert not torch.equal(predict(ptq, data.eval_inputs), predict(out.model, data.eval_inputs))
    _, loaded = _save_and_load(tmp_path, spec, out.model, cfg, out.meta, "fbgemm")
    with quantized_engine("fbgemm"):
        assert torch.equal(predict(out.model, data.eval_inputs), predict(loaded, data.eval_inputs))


def test_qat_freezes_batchnorm_statistics_from_the_requested_epoch(digits, monkeypatch):
    spec, model, data = digits
    frozen_in_epoch: list[int] = []
    real = torch.ao.nn.intrinsic.qat.freeze_bn_stats

    def spy(mod: nn.Module) -> None:
        if type(mod).__name__ == "GraphModule":  # apply() visits the root once per call
            frozen_in_epoch.append(len(frozen_in_epoch))
        real(mod)

    monkeypatch.setattr(torch.ao.nn.intrinsic.qat, "freeze_bn_stats", spy)
    out = apply_step(model, QATConfig(epochs=3, freeze_bn_after=1, batch_size=256), _ctx(spec, data))
    assert len(frozen_in_epoch) == 2, "frozen at the start of epochs 1 and 2, not epoch 0"
    assert out.meta["bn_frozen_from_epoch"] == 1


def test_qat_without_labels_trains_towards_the_float_outputs(builtin_cache):
    spec, model = _load("mlp", builtin_cache)
    data = spec.data()
    out = apply_step(model, QATConfig(epochs=1, batch_size=256), _ctx(spec, data))
    assert out.meta["target"] == "reference"
    assert out.meta["epoch_losses"][0] > 0
    assert isinstance(out.model.get_submodule("fc1"), nniq.LinearReLU)


# ----------------------------------------------------------------------------------- dynamic
def test_dynamic_int8_shrinks_the_mlp_artifact_about_four_times(builtin_cache, tmp_path):
    spec, model = _load("mlp", builtin_cache)
    cfg = DynamicQuantConfig()
    out = apply_step(model, cfg, _ctx(spec, spec.data()))
    assert isinstance(out.model.fc1, nnqd.Linear) and isinstance(out.model.fc2, nnqd.Linear)
    size_q, loaded = _save_and_load(tmp_path, spec, out.model, cfg, out.meta, "fbgemm")
    assert _float_bytes(tmp_path, model) / size_q > 3.5
    x = spec.make_input(64)
    assert torch.equal(out.model(x), loaded(x))


@pytest.mark.parametrize("name, rnn_type", [("seq_lstm", PortableDynamicLSTM), ("seq_gru", PortableDynamicGRU)])
def test_dynamic_int8_quantizes_lstm_and_gru_and_the_artifact_reloads_weights_only(builtin_cache, tmp_path,
                                                                                    name, rnn_type):
    spec, model = _load(name, builtin_cache)
    data = spec.data()
    cfg = DynamicQuantConfig()
    out = apply_step(model, cfg, _ctx(spec, data))
    assert type(out.model.rnn) is rnn_type and isinstance(out.model.rnn, (nnqd.LSTM, nnqd.GRU))
    assert isinstance(out.model.head, nnqd.Linear)
    assert isinstance(out.model.embedding, nn.Embedding), "embeddings stay float unless asked"
    # The state dict holds tensors only (torch.ao's own RNN state dict holds TorchScript objects).
    assert all(isinstance(v, (torch.Tensor, torch.dtype, tuple)) for v in out.model.state_dict().values())
    size_q, loaded = _save_and_load(tmp_path, spec, out.model, cfg, out.meta, "fbgemm")
    assert _float_bytes(tmp_path, model) / size_q > 2.5
    with quantized_engine("fbgemm"):
        acc_f = compute_metric("accuracy", predict(model, data.eval_inputs), labels=data.eval_labels, reference=None)
        out_q = predict(out.model, data.eval_inputs)
        acc_q = compute_metric("accuracy", out_q, labels=data.eval_labels, reference=None)
        assert torch.equal(out_q, predict(loaded, data.eval_inputs))
    assert acc_f > 0.9 and acc_q >= acc_f - 0.02


def test_dynamic_int8_quantizes_embedding_tables_when_asked(builtin_cache, tmp_path):
    spec, model = _load("seq_lstm", builtin_cache)
    data = spec.data()
    cfg = DynamicQuantConfig(quantize_embeddings=True)
    out = apply_step(model, cfg, _ctx(spec, data))
    emb = out.model.embedding
    assert isinstance(emb, nnq.Embedding)
    assert emb.weight().qscheme() == torch.per_channel_affine_float_qparams
    assert out.meta["quantized_embeddings"] == ["embedding"]
    plain = apply_step(model, DynamicQuantConfig(), _ctx(spec, data))
    size_emb, loaded = _save_and_load(tmp_path, spec, out.model, cfg, out.meta, "fbgemm")
    size_plain = save_artifact(tmp_path / "p.mpz", plain.model, {})
    assert size_emb < size_plain
    x = spec.make_input(64)
    assert torch.equal(out.model(x), loaded(x))


def test_dynamic_int8_with_nothing_to_quantize_is_a_user_error(digits):
    spec, model, data = digits
    with pytest.raises(UserInputError, match="found no LSTM module"):
        apply_step(model, DynamicQuantConfig(module_types=("LSTM",)), _ctx(spec, data))


def test_dynamic_keep_float_covers_a_whole_block(builtin_cache):
    spec, model = _load("seq_lstm", builtin_cache)
    out = apply_step(model, DynamicQuantConfig(keep_float=("rnn",)), _ctx(spec, spec.data()))
    assert type(out.model.rnn) is nn.LSTM
    assert out.meta["quantized_modules"] == ["head"]


def test_8_bit_activations_use_the_full_range_kernel_only_where_it_is_exact(builtin_cache):
    spec, model = _load("mlp", builtin_cache)
    data = spec.data()
    cfg8 = DynamicQuantConfig(reduce_range=False)
    if full_range_activations_exact("fbgemm"):
        out8 = apply_step(model, cfg8, _ctx(spec, data))
        out7 = apply_step(model, DynamicQuantConfig(), _ctx(spec, data))
        assert type(out8.model.fc1) is FullRangeDynamicLinear
        assert (out8.meta["activation_bits"], out7.meta["activation_bits"]) == (8, 7)
        ref = predict(model, data.eval_inputs)
        with quantized_engine("fbgemm"):
            e8 = (predict(out8.model, data.eval_inputs) - ref).pow(2).mean()
            e7 = (predict(out7.model, data.eval_inputs) - ref).pow(2).mean()
        assert e8 < e7, "8-bit activations should be closer to float than 7-bit"
    else:
        with pytest.raises(QuantizationInputError, match="reduce_range: false needs int8 kernels"):
            apply_step(model, cfg8, _ctx(spec, data))


def test_8_bit_activations_are_refused_where_fbgemm_would_saturate():
    # FBGEMM_ENABLE_INSTRUCTIONS=AVX2 makes fbgemm use its AVX2 kernels (no VNNI), as on the older workers.
    code = textwrap.dedent("""
        import torch
        from torch import nn
        from modelpress.optimize.backends import full_range_activations_exact, get_backend, QuantizationInputError
        assert not full_range_activations_exact("fbgemm")
        assert full_range_activations_exact("qnnpack")
        try:
            get_backend().quantize_dynamic(nn.Sequential(nn.Linear(4, 4)), engine="fbgemm", per_channel=True,
                                           module_types=("Linear",), keep_float=(), reduce_range=False)
        except QuantizationInputError as e:
            print("refused:", e)
    """)
    env = {**os.environ, "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused: reduce_range: false needs int8 kernels" in proc.stdout
    assert "reduce_range: true" in proc.stdout


def test_unknown_backend_is_a_recipe_error(digits):
    spec, model, data = digits
    with pytest.raises(RecipeError, match="unknown quantization backend 'torchao'; known: torch.ao"):
        apply_step(model, StaticQuantConfig(backend="torchao"), _ctx(spec, data))


@pytest.mark.parametrize("name", ["RoBERTa", "Swin"])
def test_static_int8_leaves_a_transformers_own_integer_arithmetic_unobserved(tmp_path, name):
    # RoBERTa computes position ids (cumsum(mask) * mask) and Swin window indices and sizes inside the exported
    # graph: observers there failed ("histogram_cpu" not implemented for 'Int'; 'int' has no 'numel').
    from modelpress.optimize import optimize_model
    from modelpress.optimize.recipes import resolve_recipe
    from modelpress.optimize.sources import parse_model_ref
    from modelpress.zoo.families import build_family, family

    built = build_family(family(name), tmp_path)
    ref = parse_model_ref(built.model, data=built.data, preprocess=built.preprocess, max_length=built.max_length,
                          latency_batches=(1,))
    r = optimize_model(model_ref=ref, recipe=resolve_recipe("static-int8"), engine="x86", store=tmp_path / "s",
                       warmup=1, runs=3)
    assert r.status in ("succeeded", "rejected") and r.runtime == "torch"
    assert r.size_after_bytes < r.size_before_bytes and r.extra["reload_check"]["equal"]

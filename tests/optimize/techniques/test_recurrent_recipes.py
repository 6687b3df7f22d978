"""QAT, static int8 and structured pruning on the recurrent zoo models (seq_lstm / seq_gru).

torch.ao has no static/QAT int8 kernels for LSTM/GRU and quantizes embeddings weight-only, so the FX steps
give those modules their own qconfigs; Torch-Pruning's LSTM pruner is wrong and it has none for GRU, so
prune_structured brings its own. Each test checks module types, shapes or bytes, and reloads.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.ao.nn.quantized as nnq
import torch.ao.nn.quantized.dynamic as nnqd
from torch import nn

import modelpress
from modelpress.optimize.artifacts import save_artifact
from modelpress.optimize.backends import PortableDynamicGRU, PortableDynamicLSTM, quantized_engine
from modelpress.errors import UserInputError
from modelpress.optimize.recipes import QATConfig, Recipe, StaticQuantConfig, StructuredPruneConfig
from modelpress.optimize.techniques.registry import StepContext, apply_step
from modelpress.optimize.sources.registered import materialize, resolve_model
from modelpress.optimize.spec import ModelSpec

CELLS = [("seq_lstm", nn.LSTM, PortableDynamicLSTM), ("seq_gru", nn.GRU, PortableDynamicGRU)]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _load(name: str, cache: Path) -> tuple[ModelSpec, nn.Module]:
    spec = resolve_model(name)
    model, _ = materialize(spec, weights=None, max_bytes=1 << 31, cache_dir=cache)
    return spec, model


def _ctx(spec: ModelSpec, data: object) -> StepContext:
    return StepContext(spec=spec, data=data, engine="fbgemm", reference=None)  # type: ignore[arg-type]


def _save_and_load(tmp_path: Path, spec: ModelSpec, model: nn.Module, cfg: object, meta: dict) -> tuple[int, nn.Module]:
    recipe = Recipe.from_dict({"name": "t", "steps": [cfg.to_dict()]})  # type: ignore[attr-defined]
    manifest = {"model": {"name": spec.name, "version": spec.version, "content_sha256": "x"}, "engine": "fbgemm",
                "torch_version": torch.__version__, "recipe": recipe.to_dict(), "steps_meta": [meta]}
    path = tmp_path / "a.mpz"
    return save_artifact(path, model, manifest), modelpress.load(str(path))


def _float_bytes(tmp_path: Path, model: nn.Module) -> int:
    return save_artifact(tmp_path / "f.mpz", model, {"recipe": {"steps": []}, "steps_meta": []})


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad(), quantized_engine("fbgemm"):
        return float((model(x).argmax(-1) == y).float().mean())


@pytest.mark.parametrize(("name", "float_rnn", "portable"), CELLS)
def test_qat_quantizes_embedding_weight_only_and_the_rnn_dynamically_and_reloads(builtin_cache, tmp_path, name,
                                                                                 float_rnn, portable):
    spec, model = _load(name, builtin_cache)
    data = spec.data()
    cfg = QATConfig(epochs=1)
    out = apply_step(model, cfg, _ctx(spec, data))
    q = out.model
    assert isinstance(q.embedding, nnq.Embedding)
    assert q.embedding.weight().qscheme() == torch.per_channel_affine_float_qparams
    assert type(q.rnn) is portable and isinstance(q.rnn, (nnqd.LSTM, nnqd.GRU))
    assert isinstance(q.head, nnq.Linear) and not isinstance(q.head, nnqd.Linear), "head is static int8"
    assert out.meta["dynamic_modules"] == ["rnn"]
    assert out.meta["weight_only_modules"] == ["embedding"]
    assert out.meta["unquantized_modules"] == []
    assert out.meta["fx_module_qconfigs"][float_rnn.__name__] == "dynamic_int8"
    size_q, loaded = _save_and_load(tmp_path, spec, q, cfg, out.meta)
    assert _float_bytes(tmp_path, model) / size_q > 3.0
    x, y = data.eval_inputs[:300], data.eval_labels[:300]
    with torch.no_grad(), quantized_engine("fbgemm"):
        assert torch.equal(q(x), loaded(x))
    assert _accuracy(q, x, y) >= _accuracy(model, x, y) - 0.03


def test_qat_keep_float_leaves_the_named_rnn_float_and_says_so(builtin_cache, tmp_path):
    spec, model = _load("seq_gru", builtin_cache)
    cfg = QATConfig(epochs=1, keep_float=("rnn",))
    out = apply_step(model, cfg, _ctx(spec, spec.data()))
    assert type(out.model.rnn) is nn.GRU
    assert out.meta["unquantized_modules"] == ["rnn"] and out.meta["dynamic_modules"] == []
    _, loaded = _save_and_load(tmp_path, spec, out.model, cfg, out.meta)
    x = spec.make_input(16)
    with torch.no_grad(), quantized_engine("fbgemm"):
        assert torch.equal(out.model(x), loaded(x))


def test_static_int8_of_an_lstm_model_quantizes_the_lstm_instead_of_leaving_it_float(builtin_cache, tmp_path):
    spec, model = _load("seq_lstm", builtin_cache)
    data = spec.data()
    cfg = StaticQuantConfig(calibration_batches=2)
    out = apply_step(model, cfg, _ctx(spec, data))
    assert type(out.model.rnn) is PortableDynamicLSTM
    assert isinstance(out.model.embedding, nnq.Embedding)
    size_q, loaded = _save_and_load(tmp_path, spec, out.model, cfg, out.meta)
    assert _float_bytes(tmp_path, model) / size_q > 3.0
    x = data.eval_inputs[:300]
    with torch.no_grad(), quantized_engine("fbgemm"):
        assert torch.equal(out.model(x), loaded(x))
    assert _accuracy(out.model, x, data.eval_labels[:300]) > 0.9


@pytest.mark.parametrize(("name", "float_rnn", "portable"), CELLS)
def test_structured_pruning_halves_the_rnn_hidden_size_and_reloads_identically(builtin_cache, tmp_path, name,
                                                                              float_rnn, portable):
    spec, model = _load(name, builtin_cache)
    cfg = StructuredPruneConfig(amount=0.5)
    out = apply_step(model, cfg, _ctx(spec, spec.data()))
    p = out.model
    gates = 4 if float_rnn is nn.LSTM else 3
    assert p.rnn.hidden_size == 64 and p.head.in_features == 64 and p.head.out_features == 4
    assert tuple(p.rnn.weight_ih_l0.shape) == (gates * 64, 32)
    assert tuple(p.rnn.weight_hh_l0.shape) == (gates * 64, 64)
    assert out.meta["recurrent_layers"] == {"rnn": {"type": float_rnn.__name__, "hidden_size": [128, 64]}}
    size_p, loaded = _save_and_load(tmp_path, spec, p, cfg, out.meta)
    assert _float_bytes(tmp_path, model) / size_p > 2.5
    x = spec.make_input(32)
    with torch.no_grad():
        assert p(x).shape == (32, 4)
        assert torch.equal(p(x), loaded(x))


def test_structured_pruning_removes_exactly_the_gate_rows_of_the_dropped_hidden_units(builtin_cache):
    # Units kept must keep their own weights, gate by gate: checks the gate-stacked indexing.
    spec, model = _load("seq_lstm", builtin_cache)
    w_hh = model.rnn.weight_hh_l0.detach().clone()
    head_w = model.head.weight.detach().clone()
    out = apply_step(model, StructuredPruneConfig(amount=0.5), _ctx(spec, spec.data()))
    kept = [int(i) for i in (out.model.head.weight[0][:, None] == head_w[0][None, :]).nonzero()[:, 1]]
    assert len(kept) == 64
    keep = torch.tensor(kept)
    rows = torch.cat([keep + g * 128 for g in range(4)])
    assert torch.equal(out.model.rnn.weight_hh_l0, w_hh[rows][:, keep])


class _BiLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(24, 8)
        self.rnn = nn.LSTM(8, 16, batch_first=True, bidirectional=True)
        self.mid = nn.Linear(32, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embedding(x))
        return self.head(torch.relu(self.mid(out[:, -1])))


def test_structured_pruning_refuses_a_bidirectional_lstm_up_front_naming_it():
    spec = resolve_model("seq_lstm")
    model = _BiLSTM().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserInputError, match=r"rnn \(LSTM with num_layers=1, bidirectional=True"):
        apply_step(model, StructuredPruneConfig(amount=0.5), _ctx(spec, None))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "nothing pruned before refusing"
    # Ignoring it is the way out: the rest of the model is pruned.
    out = apply_step(model, StructuredPruneConfig(amount=0.5, ignore=("rnn",)), _ctx(spec, None))
    assert out.model.mid.out_features == 16 and out.model.rnn.hidden_size == 16

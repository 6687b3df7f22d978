"""Quantizer tuning in a runtime (SmoothQuant strength in NNCF): chosen on selection rows, graph kept.

A tiny real transformer (attention, softmax, LayerNorm, FFN) with activation outliers in a few channels,
the case SmoothQuant exists for, quantized by real NNCF. Nothing is stubbed.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from modelpress.optimize.recipes import DynamicQuantConfig, Recipe, StaticQuantConfig
from modelpress.optimize.job import run_model
from modelpress.optimize.runtimes.openvino_rt import SMOOTH_QUANT_ALPHAS, read_ovz
from modelpress.optimize.runtimes.registry import get_runtime
from modelpress.optimize.spec import ModelSpec, TaskData

VOCAB, SEQ, DIM = 64, 12, 32


class TinyEncoder(nn.Module):
    """One pre-norm encoder block, written out so the exported graph holds Softmax and MVN."""

    def __init__(self, pool: str = "first") -> None:
        super().__init__()
        self.pool = pool
        self.emb = nn.Embedding(VOCAB, DIM)
        self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.q, self.k, self.v, self.o = (nn.Linear(DIM, DIM) for _ in range(4))
        self.up, self.down = nn.Linear(DIM, 4 * DIM), nn.Linear(4 * DIM, DIM)
        self.head = nn.Linear(DIM, 16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        x = self.norm1(h)
        att = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) / DIM ** 0.5, dim=-1)
        h = h + self.o(att @ self.v(x))
        h = h + self.down(torch.relu(self.up(self.norm2(h))))
        # First-token (CLS) pooling by default: a mean-pooled head ("mean", as many sentence classifiers pool)
        # after SmoothQuant makes OpenVINO 2026.4's int8 answer depend on the batch (test_batch_consistency.py),
        # which the pipeline refuses for static int8.
        return self.head(h.mean(1) if self.pool == "mean" else h[:, 0])


def _tiny_spec() -> tuple[ModelSpec, TaskData, nn.Module]:
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    with torch.no_grad():  # a few outlier channels after the norms, as trained transformers have
        model.norm1.weight[:3] = 25.0
        model.norm2.weight[:2] = 30.0
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (200, SEQ), generator=g)
    data = TaskData(eval_inputs=ids[:80], eval_labels=None, calib_inputs=ids[80:144], val_inputs=ids[144:200],
                    description="random token ids")
    spec = ModelSpec(name="tiny_encoder", version=1, build=TinyEncoder, data=lambda: data, metric="cosine",
                     make_input=lambda b: torch.randint(0, VOCAB, (b, SEQ), generator=torch.Generator().manual_seed(b)),
                     latency_batches=(1, 8), extra={"input_names": ["ids"]})
    return spec, data, model


@pytest.fixture(scope="module")
def tiny() -> tuple[ModelSpec, TaskData, nn.Module]:
    return _tiny_spec()


def _op_types(ovz: Path) -> Counter:
    import openvino as ov

    meta, xml, binary = read_ovz(ovz)
    import numpy as np

    m = ov.Core().read_model(xml.decode(), ov.Tensor(np.frombuffer(binary, np.uint8)))
    return Counter(op.get_type_name() for op in m.get_ops())


def test_only_a_transformers_static_int8_is_offered_smoothquant_strengths(tiny, digits, tmp_path: Path) -> None:
    rt = get_runtime("openvino")
    spec, data, model = tiny
    exp = rt.export(model, (data.calib_inputs[:2],), ["ids"], tmp_path)
    assert exp.meta["transformer"] is True
    assert rt.tunings(exp, StaticQuantConfig()) == [{"smooth_quant_alpha": a} for a in SMOOTH_QUANT_ALPHAS]
    assert rt.tunings(exp, DynamicQuantConfig()) == []  # weight-only int8 has no activation scales to tune
    _, ddata, dmodel = digits
    assert rt.tunings(rt.export(dmodel, (ddata.calib_inputs[:2],), ["x"], tmp_path), StaticQuantConfig()) == []
    for name in ("torch", "onnxruntime"):
        assert get_runtime(name).tunings(exp, StaticQuantConfig()) == []


def test_a_smoothquant_strength_changes_the_numbers_but_not_the_int8_graph(tiny, tmp_path: Path) -> None:
    rt = get_runtime("openvino")
    spec, data, model = tiny
    exp = rt.export(model, (data.calib_inputs[:2],), ["ids"], tmp_path)
    calib = [(data.calib_inputs[i:i + 16],) for i in range(0, 64, 16)]
    default = rt.quantize(exp, StaticQuantConfig(), calib, keep_float=[], workdir=tmp_path)
    tuned = rt.quantize(exp, StaticQuantConfig(), calib, keep_float=[], workdir=tmp_path,
                        tuning={"smooth_quant_alpha": 0.65})
    assert tuned.meta["tuning"] == {"smooth_quant_alpha": 0.65} and default.meta["tuning"] == {}
    rt.save(default, tmp_path / "d.ovz"), rt.save(tuned, tmp_path / "t.ovz")
    # The same tensors in the .bin (scales differ in value only); the .xml differs by NNCF's settings record.
    assert len(read_ovz(tmp_path / "d.ovz")[2]) == len(read_ovz(tmp_path / "t.ovz")[2])
    ops_d, ops_t = _op_types(tmp_path / "d.ovz"), _op_types(tmp_path / "t.ovz")
    assert ops_d == ops_t and ops_d["FakeQuantize"] > 0  # the same quantized graph: the same kernels run
    x = data.val_inputs[:8]
    out_d, out_t = rt.load(tmp_path / "d.ovz", 1)(x), rt.load(tmp_path / "t.ovz", 1)(x)
    assert not torch.equal(out_d, out_t)


def _with_eval(spec: ModelSpec, data: TaskData, rows: slice) -> ModelSpec:
    d = dataclasses.replace(data, eval_inputs=data.eval_inputs[rows])
    return dataclasses.replace(spec, data=lambda: d)


def test_the_tuning_is_chosen_on_validation_rows_whatever_the_eval_rows_and_recorded(tiny, tmp_path: Path) -> None:
    spec, data, model = tiny
    recipe = Recipe.from_dict({"name": "t-ov-static", "runtime": "openvino",
                               "steps": [{"type": "quantize_static", "calibration_batch_size": 16}]})
    runs = [run_model(model_name="tiny", spec=_with_eval(spec, data, ev), recipe=recipe, engine="fbgemm",
                                store=tmp_path / str(i), float_model=model, content=str(i) * 64, threads=1,
                                warmup=1, runs=3)
            for i, ev in enumerate([slice(0, 40), slice(40, 80)])]
    recs = [r.extra["candidates"][0]["tuning"] for r in runs]
    for rec in recs:
        assert rec["rows"] == "validation" and rec["metric"] == "cosine"
        tried = rec["tried"]
        assert [t["tuning"] for t in tried] == [None] + [{"smooth_quant_alpha": a} for a in SMOOTH_QUANT_ALPHAS]
        best = max(t["selection_metric"] for t in tried)
        # The defaults win ties; otherwise the most faithful option on the validation rows is kept.
        want = next(t["tuning"] for t in tried if t["selection_metric"] == best)
        assert rec["chosen"] == want
    # Other eval rows, the same options scored on the same validation rows: the scores agree, and the score
    # a choice was made on is the saved artifact's score on the VALIDATION rows (recomputed here from the
    # file). (This bound was 0.05 while the toy had a mean-pooled head: OpenVINO then gave batch-dependent
    # int8 outputs, 0.686 in one process and 0.719 in another, which is what broke CI at 0.06.)
    from modelpress.optimize.measure import compute_metric, predict

    assert [t["tuning"] for t in recs[0]["tried"]] == [t["tuning"] for t in recs[1]["tried"]]
    for a, b in zip(recs[0]["tried"], recs[1]["tried"]):
        assert a["selection_metric"] == pytest.approx(b["selection_metric"], abs=1e-3)
    rt = get_runtime("openvino")
    ref_val = predict(model, data.val_inputs, batch_size=256)
    for r, rec in zip(runs, recs):
        art = rt.load(Path(r.artifact_path), threads=1)
        val_score = compute_metric("cosine", predict(art, data.val_inputs, batch_size=256), labels=None,
                                   reference=ref_val)
        chosen = next(t for t in rec["tried"] if t["tuning"] == rec["chosen"])
        assert chosen["selection_metric"] == pytest.approx(val_score, abs=1e-3)
    for r, rec in zip(runs, recs):
        assert r.steps_meta[-1]["tuning"] == (rec["chosen"] or {})
        meta, _, _ = read_ovz(Path(r.artifact_path))
        assert meta["detail"]["tuning"] == (rec["chosen"] or {})

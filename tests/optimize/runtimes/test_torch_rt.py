"""The torch runtime adapter: today's torch.ao path behind the runtime interface, artifact still a .mpz."""

from __future__ import annotations

from pathlib import Path

import torch

from modelpress.optimize.measure import compute_metric, predict
from modelpress.optimize.recipes import DynamicQuantConfig, StaticQuantConfig
from modelpress.optimize.runtimes.registry import get_runtime


def _manifest(name: str) -> dict:
    return {"model": {"name": name}, "engine": "fbgemm", "recipe": {"name": "t"}}


def test_dynamic_int8_round_trip_of_the_mlp_reloads_the_measured_model(mlp, tmp_path: Path) -> None:
    spec, data, model = mlp
    rt = get_runtime("torch")
    exp = rt.export(model, (data.eval_inputs[:2],), ["x"], tmp_path)
    assert rt.layers(exp) == ["fc1", "fc2"]
    exp.handle.manifest = _manifest("mlp")
    q = rt.quantize(exp, DynamicQuantConfig(), [(data.calib_inputs,)], keep_float=["fc2"], workdir=tmp_path)
    assert q.quantized and q.meta["quantized_layers"] == ["fc1"] and q.meta["float_layers"] == ["fc2"]
    nbytes = rt.save(q, tmp_path / "m.mpz")
    assert nbytes == (tmp_path / "m.mpz").stat().st_size
    fn = rt.load(tmp_path / "m.mpz", threads=1)
    assert torch.equal(predict(fn, data.eval_inputs), predict(q.handle.module, data.eval_inputs))
    assert type(fn.fc2) is torch.nn.Linear  # kept float survives the reload
    assert type(model.fc1) is torch.nn.Linear  # the caller's model is never quantized in place


def test_static_int8_of_the_digits_cnn_calibrates_on_the_given_batches_and_keeps_accuracy(digits, tmp_path) -> None:
    spec, data, model = digits
    rt = get_runtime("torch")
    exp = rt.export(model, (data.calib_inputs[:2],), ["x"], tmp_path)
    exp.handle.manifest = _manifest("digits_cnn")
    calib = [(data.calib_inputs[i:i + 32],) for i in range(0, 64, 32)]
    q = rt.quantize(exp, StaticQuantConfig(calibration_batches=2), calib, keep_float=[], workdir=tmp_path)
    nf, nq = rt.save(exp, tmp_path / "f.mpz"), rt.save(q, tmp_path / "q.mpz")
    assert nq < 0.4 * nf
    fn = rt.load(tmp_path / "q.mpz", threads=1)
    acc_t = compute_metric("accuracy", predict(model, data.eval_inputs), labels=data.eval_labels, reference=None)
    acc_q = compute_metric("accuracy", predict(fn, data.eval_inputs), labels=data.eval_labels, reference=None)
    assert acc_q >= acc_t - 0.02

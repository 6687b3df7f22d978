"""ONNX export of float models, checked in onnxruntime; int8 refused clearly; the train-mode trap guarded."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from modelpress.optimize.backends import get_backend
from modelpress.optimize.onnx_export import OnnxExportError, export_and_check, export_onnx, run_onnx
from modelpress.optimize.job import optimize_model
from modelpress.optimize.recipes import Recipe
from modelpress.optimize.sources.registered import materialize, resolve_model


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.getbasetemp() / "builtin-cache"
    spec = resolve_model("digits_cnn")
    model, _ = materialize(spec, weights=None, max_bytes=1 << 30, cache_dir=cache)
    return spec, model


def test_float_digits_cnn_exports_with_a_dynamic_batch_and_onnxruntime_matches(digits, tmp_path):
    spec, model = digits
    path = tmp_path / "digits.onnx"
    rep = export_and_check(model, spec.make_input(2), path, input_names=["image"],
                           check_inputs=[spec.make_input(7), spec.make_input(64)])
    assert rep.check_batch_sizes == [2, 7, 64]
    assert rep.max_abs_diff < 1e-4 and rep.mean_cosine > 0.99999
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["image"]
    assert rep.size_bytes == path.stat().st_size > 1_000_000  # the weights are in the file
    # Predictions agree on the held-out digits, not only on the probe inputs.
    data = spec.data()
    got = run_onnx(path, data.eval_inputs)
    with torch.inference_mode():
        assert torch.equal(got.argmax(-1), model(data.eval_inputs).argmax(-1))
    assert not list(tmp_path.glob(".*.tmp")), "the export is written atomically (no temp files left)"


def test_export_refuses_int8_models_and_says_what_to_do_instead(tmp_path):
    q = get_backend().quantize_dynamic(nn.Sequential(nn.Linear(4, 4)).eval(), engine="fbgemm", per_channel=True,
                                       module_types=("Linear",), keep_float=())
    with pytest.raises(OnnxExportError, match="cannot export torch.ao int8.*quantize_dynamic\\(per_channel=True\\)"):
        export_onnx(q, torch.randn(2, 4), tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()


def test_export_refuses_training_mode_and_never_leaves_a_model_in_training_mode(tmp_path):
    inner = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2)).eval()

    class Wrapper(nn.Module):
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m(x)

    # The field-notes trap: a fresh wrapper is in training mode and export would switch the inner model too.
    with pytest.raises(OnnxExportError, match="eval mode"):
        export_onnx(Wrapper(inner), torch.randn(2, 4), tmp_path / "w.onnx")
    assert not inner.training
    w = Wrapper(inner).eval()
    rep = export_and_check(w, torch.randn(3, 4), tmp_path / "w.onnx")
    assert not any(m.training for m in inner.modules()) and not w.training
    assert rep.max_abs_diff < 1e-5  # dropout stayed off in the exported graph


def test_pipeline_exports_the_float_model_and_records_the_onnxruntime_check(tmp_path):
    recipe = Recipe.from_dict({"name": "onnx", "steps": [{"type": "quantize_dynamic"}]})
    r = optimize_model(model_name="mlp", recipe=recipe, engine="fbgemm", store=tmp_path, warmup=1, runs=3,
                       onnx_export="float")
    onnx_rep = r.extra["onnx"]
    assert Path(onnx_rep["path"]).is_file() and onnx_rep["path"].endswith("-float.onnx")
    assert onnx_rep["max_abs_diff"] < 1e-4
    assert onnx_rep["size_bytes"] > r.size_after_bytes  # float ONNX vs the int8 artifact

"""The ONNX Runtime adapter: export, quant_pre_process + static QDQ / dynamic int8, one-file artifact, reload.

A missing onnx/onnxscript/onnxruntime FAILS these tests (declared extras); nothing is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from modelpress.errors import UserInputError
from modelpress.optimize.measure import compute_metric, predict
from modelpress.optimize.recipes import DynamicQuantConfig, QATConfig, StaticQuantConfig
from modelpress.optimize.runtimes.onnxruntime_rt import OnnxRuntime
from modelpress.optimize.runtimes.registry import get_runtime


#: Initializers up to this many elements are scales, biases and norms (float by design); weights are larger.
DIM_LIMIT = 160


def _batches(x: torch.Tensor, size: int) -> list[tuple[torch.Tensor, ...]]:
    return [(x[i:i + size],) for i in range(0, len(x), size)]


@pytest.fixture(scope="module")
def rt() -> OnnxRuntime:
    r = get_runtime("onnxruntime")
    assert r.is_available() is None, r.is_available()
    return r


def test_the_registry_gives_the_onnxruntime_adapter_with_its_versions(rt: OnnxRuntime) -> None:
    assert isinstance(rt, OnnxRuntime) and rt.suffix == ".onnx"
    assert set(rt.versions()) == {"onnxruntime", "onnx", "torch"}


def test_layers_are_named_by_the_torch_modules_they_came_from(rt, mlp, tmp_path: Path) -> None:
    spec, data, model = mlp
    exp = rt.export(model, (data.eval_inputs[:2],), ["x"], tmp_path)
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert rt.layers(exp) == sorted(linear)


def test_float_export_reloads_from_one_file_and_reproduces_torch_at_any_batch(rt, mlp, tmp_path: Path) -> None:
    spec, data, model = mlp
    exp = rt.export(model, (data.eval_inputs[:2],), ["x"], tmp_path)
    assert not model.training
    nbytes = rt.save(exp, tmp_path / "out" / "mlp.onnx")
    assert nbytes == (tmp_path / "out" / "mlp.onnx").stat().st_size
    assert os.listdir(tmp_path / "out") == ["mlp.onnx"]  # one file: weights inside, no temp leftovers
    n_params = sum(p.numel() for p in model.parameters())
    assert 4 * n_params <= nbytes < 4 * n_params * 1.05
    fn = rt.load(tmp_path / "out" / "mlp.onnx", threads=1)
    x = data.eval_inputs[:64]
    assert torch.allclose(fn(x), model(x).detach(), atol=1e-4)
    assert fn(x[:1]).shape == (1, model(x[:1]).shape[1])


def test_dynamic_int8_per_channel_shrinks_the_mlp_and_stays_faithful(rt, mlp, tmp_path: Path) -> None:
    spec, data, model = mlp
    exp = rt.export(model, (data.eval_inputs[:2],), ["x"], tmp_path)
    q = rt.quantize(exp, DynamicQuantConfig(), [], keep_float=[], workdir=tmp_path)
    assert q.quantized and q.meta["method"] == "quantize_dynamic" and q.meta["per_channel"] is True
    f_bytes, q_bytes = rt.save(exp, tmp_path / "f.onnx"), rt.save(q, tmp_path / "q.onnx")
    assert q_bytes < 0.3 * f_bytes
    fq = rt.load(tmp_path / "q.onnx", threads=1)
    ref = predict(model, data.eval_inputs)
    agree = compute_metric("top1_agreement", predict(fq, data.eval_inputs), labels=None, reference=ref)
    assert agree > 0.95, agree


def test_dynamic_int8_uses_seven_bit_weights_exactly_where_full_range_is_measured_to_saturate(rt, mlp, tmp_path) -> None:
    from modelpress.optimize.runtimes.onnxruntime_rt import s8_matmul_exact

    spec, data, model = mlp
    exp = rt.export(model, (data.eval_inputs[:2],), ["x"], tmp_path)
    auto = rt.quantize(exp, DynamicQuantConfig(), [], keep_float=[], workdir=tmp_path)
    assert auto.meta["reduce_range"] is (not s8_matmul_exact())
    forced = rt.quantize(exp, DynamicQuantConfig(reduce_range=False), [], keep_float=[], workdir=tmp_path)
    assert forced.meta["reduce_range"] is False


def test_static_qdq_uses_seven_bit_weights_where_the_kernel_saturates_and_keeps_the_mlp_faithful(
        rt, mlp, tmp_path: Path) -> None:
    # On an AVX2-only host the 8-bit QDQ MLP agreed with float on 0.858 of rows (u8×s8 int16 saturation);
    # with 7-bit weights, 0.975. On a VNNI host 8 bits are exact and kept. Either way the artifact is faithful.
    from modelpress.optimize.runtimes.onnxruntime_rt import s8_matmul_exact

    spec, data, model = mlp
    exp = rt.export(model, (data.eval_inputs[:2],), ["x"], tmp_path)
    q = rt.quantize(exp, StaticQuantConfig(), _batches(data.calib_inputs, 32), keep_float=[], workdir=tmp_path)
    assert q.meta["reduce_range"] is (not s8_matmul_exact())
    rt.save(q, tmp_path / "q.onnx")
    ref = predict(model, data.eval_inputs)
    agree = compute_metric("top1_agreement", predict(rt.load(tmp_path / "q.onnx", threads=1), data.eval_inputs),
                           labels=None, reference=ref)
    assert agree > 0.95, agree


def test_static_qdq_of_the_digits_cnn_keeps_accuracy_and_reload_gives_the_measured_outputs(
        rt, digits, tmp_path: Path) -> None:
    spec, data, model = digits
    exp = rt.export(model, (data.calib_inputs[:2],), ["x"], tmp_path)
    q = rt.quantize(exp, StaticQuantConfig(), _batches(data.calib_inputs, 32), keep_float=[], workdir=tmp_path)
    assert q.meta["format"] == "QDQ" and q.meta["calibration_batches"] >= 1
    f_bytes, q_bytes = rt.save(exp, tmp_path / "f.onnx"), rt.save(q, tmp_path / "q.onnx")
    assert q_bytes < 0.4 * f_bytes
    fq = rt.load(tmp_path / "q.onnx", threads=1)
    acc_t = compute_metric("accuracy", predict(model, data.eval_inputs), labels=data.eval_labels, reference=None)
    measured = predict(fq, data.eval_inputs)
    acc_q = compute_metric("accuracy", measured, labels=data.eval_labels, reference=None)
    assert acc_q >= acc_t - 0.02, (acc_t, acc_q)
    again = rt.load(tmp_path / "q.onnx", threads=1)
    assert torch.equal(predict(again, data.eval_inputs), measured)


def test_a_layer_kept_float_has_no_quantized_node_in_the_saved_model(rt, digits, tmp_path: Path) -> None:
    import onnx

    spec, data, model = digits
    exp = rt.export(model, (data.calib_inputs[:2],), ["x"], tmp_path)
    layers = rt.layers(exp)
    keep = layers[0]
    q = rt.quantize(exp, StaticQuantConfig(), _batches(data.calib_inputs, 32), keep_float=[keep], workdir=tmp_path)
    rt.save(q, tmp_path / "q.onnx")
    g = onnx.load(str(tmp_path / "q.onnx")).graph
    excluded = set(q.meta["nodes_excluded"])
    assert excluded
    # A layer kept float is out of ORT's quantization (no QDQ pair of its own around it); its weight is only
    # *stored* int8, by the weight-only pass, and dequantized whole in front of the float op.
    producers = {o: n for n in g.node for o in n.output}
    assert q.meta["weight_only_int8"]["weights"] == len(excluded)
    for n in g.node:
        if n.name in excluded:
            dq = producers[n.input[1]]
            assert dq.op_type == "DequantizeLinear" and dq.name.endswith(".int8.dq"), n.name
    others = [n for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.name not in excluded]
    assert any(n.input[1] in producers and producers[n.input[1]].op_type == "DequantizeLinear"
               and not producers[n.input[1]].name.endswith(".int8.dq") for n in others)


def test_weight_only_int8_of_every_weight_and_table_keeps_a_float_graph_faithful_at_a_quarter_of_the_bytes(
        rt, tmp_path: Path) -> None:
    # The tiny encoder has an embedding table (Gather) and Linear layers: the pass alone, on the float export,
    # isolates its own error from activation quantization.
    import onnx

    from modelpress.optimize.runtimes.onnxruntime_rt import int8_weight_only
    from tests.optimize.runtimes.test_tuning import _tiny_spec

    spec, data, model = _tiny_spec()
    exp = rt.export(model, (data.calib_inputs[:2],), ["ids"], tmp_path)
    nodes = rt._node_names(exp)
    ops = {n.name: n.op_type for n in onnx.load(exp.handle).graph.node}
    weights = {nd for nds in nodes.values() for nd in nds if ops[nd] != "Gather"}
    tables = {nd for nds in nodes.values() for nd in nds if ops[nd] == "Gather"}
    assert weights and tables
    counts = int8_weight_only(exp.handle, str(tmp_path / "wo.onnx"), weight_nodes=weights, gather_nodes=tables)
    assert counts == {"weights": len(weights), "tables": len(tables)}
    g = onnx.load(str(tmp_path / "wo.onnx")).graph
    big_float = [i.name for i in g.initializer if i.data_type == onnx.TensorProto.FLOAT
                 and int(torch.tensor(list(i.dims)).prod()) > DIM_LIMIT]
    assert big_float == []  # every weight and table is stored int8: only scales (one per channel/row) stay float
    # Byte for byte: the int8 copies are a quarter of the float tensors they replaced (the file of a toy this
    # small is mostly graph and scales, so the file size would say little).
    src = onnx.load(exp.handle).graph
    by_name = {i.name: i for i in src.initializer}
    replaced = {n.input[1] for n in src.node if n.name in weights} | {n.input[0] for n in src.node if n.name in tables}
    f_elems = sum(int(torch.tensor(list(by_name[r].dims)).prod()) for r in replaced)
    i8 = [i for i in g.initializer if i.data_type == onnx.TensorProto.INT8 and i.name.endswith((".int8", ".int8rows"))]
    assert sum(len(i.raw_data) for i in i8) == f_elems  # one byte per weight, where float took four
    fn_f = rt.load(Path(exp.handle), threads=1)
    fn_w = rt.load(tmp_path / "wo.onnx", threads=1)
    x = data.val_inputs
    cos = compute_metric("cosine", predict(fn_w, x), labels=None, reference=predict(fn_f, x))
    assert cos > 0.999, cos


def test_an_unknown_layer_name_or_a_qat_step_is_refused_with_what_to_change(rt, mlp, tmp_path: Path) -> None:
    spec, data, model = mlp
    exp = rt.export(model, (data.eval_inputs[:2],), ["x"], tmp_path)
    with pytest.raises(UserInputError, match="keep_float names no quantizable layer.*nope"):
        rt.quantize(exp, DynamicQuantConfig(), [], keep_float=["nope"], workdir=tmp_path)
    with pytest.raises(UserInputError, match="cannot run a 'qat' step.*runtime 'torch'"):
        rt.quantize(exp, QATConfig(), [], keep_float=[], workdir=tmp_path)


def test_the_artifact_runs_with_onnxruntime_alone_without_modelpress(rt, mlp, tmp_path: Path) -> None:
    spec, data, model = mlp
    exp = rt.export(model, (data.eval_inputs[:2],), ["x"], tmp_path)
    rt.save(rt.quantize(exp, DynamicQuantConfig(), [], keep_float=[], workdir=tmp_path), tmp_path / "m.onnx")
    x = data.eval_inputs[:8]
    torch.save(x, tmp_path / "x.pt")  # written by the test, read by the test: not user input
    script = textwrap.dedent(f"""
        import sys
        sys.modules["modelpress"] = None  # importing modelpress now fails: prove it is not needed
        import numpy as np, onnxruntime as ort, torch
        x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True).numpy()
        sess = ort.InferenceSession({str(tmp_path / 'm.onnx')!r}, providers=["CPUExecutionProvider"])
        out = sess.run(None, {{"x": x}})[0]
        np.save({str(tmp_path / 'out.npy')!r}, out)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, cwd=tmp_path)
    import numpy as np

    got = torch.from_numpy(np.load(tmp_path / "out.npy"))
    assert torch.equal(got, rt.load(tmp_path / "m.onnx", threads=1)(x))

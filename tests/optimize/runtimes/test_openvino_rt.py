"""The OpenVINO runtime adapter: export, NNCF int8, one-file artifact, reload — on tiny real models.

A missing openvino or nncf FAILS these tests (they are declared extras of the project); nothing is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from modelpress.errors import ModelLoadError, RecipeError
from modelpress.optimize.measure import compute_metric, predict
from modelpress.optimize.recipes import DynamicQuantConfig, StaticQuantConfig
from modelpress.optimize.runtimes.openvino_rt import OpenVinoRuntime, layer_of, read_ovz
from modelpress.optimize.runtimes.registry import get_runtime


def _served_atol() -> float:
    """How close OpenVINO's default compile on this CPU comes to torch fp32 on the MLP's outputs (|y| < 1).

    OpenVINO picks the precision of float parts per host: f32 on AVX2, bf16 on a CPU with AVX512_BF16 or
    AMX (measured here: 3e-3 max abs error on the MLP, 7e-7 with f32). The export itself is checked at
    1e-4 with f32 forced, on every host.
    """
    import openvino as ov

    return 1e-4 if ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT") == ov.Type.f32 else 2e-2


def _f32_outputs(path: Path, x: torch.Tensor) -> torch.Tensor:
    """The saved IR compiled with f32 forced: what the export computes, whatever the host's default."""
    import numpy as np
    import openvino as ov

    _, xml, weights = read_ovz(path)
    core = ov.Core()
    m = core.compile_model(core.read_model(xml.decode(), ov.Tensor(np.frombuffer(weights, np.uint8))), "CPU",
                           {"INFERENCE_PRECISION_HINT": "f32"})
    return torch.from_numpy(m(x.numpy())[0])


def _batches(x: torch.Tensor, size: int) -> list[tuple[torch.Tensor, ...]]:
    return [(x[i:i + size],) for i in range(0, len(x), size)]


@pytest.fixture(scope="module")
def rt() -> OpenVinoRuntime:
    r = get_runtime("openvino")
    assert r.is_available() is None, r.is_available()
    return r


def test_the_registry_names_the_openvino_adapter_and_it_reports_its_versions(rt: OpenVinoRuntime) -> None:
    assert isinstance(rt, OpenVinoRuntime) and rt.suffix == ".ovz"
    v = rt.versions()
    assert set(v) == {"openvino", "nncf"} and all(v.values())


def test_float_export_of_the_mlp_reloads_from_one_file_and_reproduces_torch(rt, mlp, tmp_path: Path) -> None:
    spec, data, model = mlp
    x = data.eval_inputs
    exp = rt.export(model, (x[:2],), ["x"], tmp_path)
    assert not model.training  # the caller's model keeps its mode
    assert rt.layers(exp) == [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    nbytes = rt.save(exp, tmp_path / "mlp.ovz")
    assert nbytes == (tmp_path / "mlp.ovz").stat().st_size
    assert sorted(os.listdir(tmp_path)) == ["mlp.ovz"]  # one file, no IR leftovers beside it
    n_params = sum(p.numel() for p in model.parameters())
    assert 4 * n_params <= nbytes < 4 * n_params * 1.05  # fp32 weights kept fp32 (not the fp16 default)
    fn = rt.load(tmp_path / "mlp.ovz", threads=1)
    out, ref = fn(x[:64]), model(x[:64]).detach()
    assert torch.allclose(_f32_outputs(tmp_path / "mlp.ovz", x[:64]), ref, atol=1e-4)  # the export is exact
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=_served_atol())  # as served on this host
    assert fn(x[:1]).shape == (1, ref.shape[1])  # the batch dimension is dynamic


def test_static_int8_of_the_digits_cnn_keeps_accuracy_and_shrinks_the_file(rt, digits, tmp_path: Path) -> None:
    spec, data, model = digits
    exp = rt.export(model, (data.calib_inputs[:2],), ["x"], tmp_path)
    q = rt.quantize(exp, StaticQuantConfig(), _batches(data.calib_inputs, 32), keep_float=[], workdir=tmp_path)
    assert q.quantized and q.meta["method"] == "nncf.quantize" and q.meta["model_type"] is None
    f_bytes, q_bytes = rt.save(exp, tmp_path / "f.ovz"), rt.save(q, tmp_path / "q.ovz")
    assert q_bytes < 0.4 * f_bytes
    fq = rt.load(tmp_path / "q.ovz", threads=1)
    acc_t = compute_metric("accuracy", predict(model, data.eval_inputs), labels=data.eval_labels, reference=None)
    acc_q = compute_metric("accuracy", predict(fq, data.eval_inputs), labels=data.eval_labels, reference=None)
    assert acc_q >= acc_t - 0.02, (acc_t, acc_q)
    # The saved artifact is what was measured: reloading it gives the same outputs again.
    again = rt.load(tmp_path / "q.ovz", threads=1)
    assert torch.equal(again(data.eval_inputs[:16]), fq(data.eval_inputs[:16]))
    meta, _, _ = read_ovz(tmp_path / "q.ovz")
    assert meta["runtime_versions"] == rt.versions() and meta["quantized"] is True


def test_layers_kept_float_stay_float_in_the_saved_int8_model(rt, digits, tmp_path: Path) -> None:
    spec, data, model = digits
    exp = rt.export(model, (data.calib_inputs[:2],), ["x"], tmp_path)
    layers = rt.layers(exp)
    assert len(layers) >= 3
    mods = dict(model.named_modules())
    keep = max(layers, key=lambda n: mods[n].weight.numel())  # the biggest layer: its bytes show clearly
    all_q = rt.quantize(exp, StaticQuantConfig(), _batches(data.calib_inputs, 64), keep_float=[], workdir=tmp_path)
    some = rt.quantize(exp, StaticQuantConfig(), _batches(data.calib_inputs, 64), keep_float=[keep], workdir=tmp_path)
    assert some.meta["float_layers"] == [keep] and keep not in some.meta["quantized_layers"]

    def fq_inputs_of(ov_model) -> set[str]:
        # Layers whose activation input comes from a FakeQuantize (NNCF moves it up through shape-only ops
        # such as Reshape and MaxPool): the layers with int8 activations.
        out = set()
        for op in ov_model.get_ordered_ops():
            if op.get_type_name() in ("MatMul", "Convolution") and layer_of(op.get_friendly_name()):
                src = op.input_value(0).get_node()
                while src.get_type_name() in ("Reshape", "MaxPool", "Transpose", "Squeeze", "Unsqueeze"):
                    src = src.input_value(0).get_node()
                if src.get_type_name() == "FakeQuantize":
                    out.add(layer_of(op.get_friendly_name()))
        return out

    assert keep in fq_inputs_of(all_q.handle)
    assert keep not in fq_inputs_of(some.handle) and fq_inputs_of(some.handle)
    # Its activations are float, its weights int8 weight-only: the file stays as small as the all-int8 one.
    assert some.meta["float_layers_weights"].startswith("int8 weight-only")
    s_bytes, a_bytes = rt.save(some, tmp_path / "s.ovz"), rt.save(all_q, tmp_path / "a.ovz")
    assert s_bytes < 1.05 * a_bytes
    # Opting out stores the kept layer's weights in fp32: the file grows by about 3 bytes per weight.
    full = rt.quantize(exp, _FloatWeights(), _batches(data.calib_inputs, 64), keep_float=[keep], workdir=tmp_path)
    n_w = dict(model.named_modules())[keep].weight.numel()
    assert rt.save(full, tmp_path / "f.ovz") > s_bytes + 2.5 * n_w
    fq = rt.load(tmp_path / "s.ovz", threads=1)
    acc = compute_metric("accuracy", predict(fq, data.eval_inputs), labels=data.eval_labels, reference=None)
    acc_t = compute_metric("accuracy", predict(model, data.eval_inputs), labels=data.eval_labels, reference=None)
    assert acc >= acc_t - 0.02


class _FloatWeights:
    """A static step config that asks for kept layers with float weights (duck-typed: the adapter reads fields)."""

    type = "quantize_static"
    float_layer_weights = "float"


def test_dynamic_maps_to_weight_only_int8_and_stays_faithful(rt, mlp, tmp_path: Path) -> None:
    spec, data, model = mlp
    x = data.eval_inputs
    exp = rt.export(model, (x[:2],), ["x"], tmp_path)
    q = rt.quantize(exp, DynamicQuantConfig(), [], keep_float=[], workdir=tmp_path)
    assert q.meta["method"] == "nncf.compress_weights" and q.meta["activations"] == "float"
    assert rt.save(q, tmp_path / "w.ovz") < 0.3 * rt.save(exp, tmp_path / "f.ovz")
    ref = predict(model, x)
    agree = compute_metric("top1_agreement", predict(rt.load(tmp_path / "w.ovz", 1), x), labels=None, reference=ref)
    assert agree >= 0.97, agree


def test_a_loaded_model_states_the_precision_and_kernels_the_plugin_chose_on_this_host(rt, mlp, tmp_path: Path) -> None:
    import openvino as ov

    spec, data, model = mlp
    x = data.eval_inputs
    exp = rt.export(model, (x[:2],), ["x"], tmp_path)
    q = rt.quantize(exp, StaticQuantConfig(), _batches(data.calib_inputs, 32), keep_float=[], workdir=tmp_path)
    rt.save(exp, tmp_path / "f.ovz")
    rt.save(q, tmp_path / "q.ovz")
    host = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    for name, weighted in (("f.ovz", {"f32", "bf16", "f16"}), ("q.ovz", {"i8", "u8"})):
        fn = rt.load(tmp_path / name, 1)
        fn(x[:8])
        ex = fn.execution()
        assert ex["inference_precision"] == host and ex["threads"] == 1, ex
        # every Linear is one weighted node, at the precision the file asks for (int8) or the host picks (float)
        assert sum(ex["weighted_ops"].values()) == linears, ex
        assert {k.split()[1] for k in ex["weighted_ops"]} <= weighted, ex
        assert not any(k.split()[2].startswith("undef") for k in ex["weighted_ops"]), ex


def test_weights_folded_at_load_keep_the_int8_file_and_run_float_kernels_with_the_same_numbers(
        rt, mlp, tmp_path: Path) -> None:
    spec, data, model = mlp
    x = data.eval_inputs
    exp = rt.export(model, (x[:2],), ["x"], tmp_path)
    per_call = rt.quantize(exp, DynamicQuantConfig(weight_decompression="per_call"), [], keep_float=[], workdir=tmp_path)
    at_load = rt.quantize(exp, DynamicQuantConfig(weight_decompression="at_load"), [], keep_float=[], workdir=tmp_path)
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert at_load.meta["weights_folded_at_load"] == linears and "weights_folded_at_load" not in per_call.meta
    assert exp.handle.get_ops() and not any(op.get_type_name() == "Maximum" for op in exp.handle.get_ops())
    # The same int8 bytes on disk (plus one small node per layer in the XML) ...
    size_pc, size_al = rt.save(per_call, tmp_path / "pc.ovz"), rt.save(at_load, tmp_path / "al.ovz")
    assert abs(size_al - size_pc) < 0.01 * size_pc and size_al < 0.3 * rt.save(exp, tmp_path / "f.ovz")
    ran = {}
    for name in ("pc.ovz", "al.ovz"):
        fn = rt.load(tmp_path / name, 1)
        ran[name] = (predict(fn, x), {k.split()[1] for k in fn.execution()["weighted_ops"]})
    # ... but the plugin kept int8 weights for one and float weights for the other,
    assert ran["pc.ovz"][1] & {"i8", "u8"} and ran["al.ovz"][1] <= {"f32", "bf16"}, ran
    # with the same int8-rounded weights inside: the outputs agree far closer than int8 rounding moves them.
    ref = predict(model, x)
    gap = (ran["al.ovz"][0] - ran["pc.ovz"][0]).abs().max() / ref.abs().max()
    assert gap < 0.02, gap


def test_unknown_keep_float_names_and_unsupported_steps_are_refused_with_the_known_names(rt, mlp, tmp_path) -> None:
    spec, data, model = mlp
    exp = rt.export(model, (data.eval_inputs[:2],), ["x"], tmp_path)
    with pytest.raises(RecipeError, match="known layers: fc1"):
        rt.quantize(exp, StaticQuantConfig(), _batches(data.calib_inputs, 32), keep_float=["nope"], workdir=tmp_path)

    class Prune:
        type = "prune_l1_unstructured"

    with pytest.raises(RecipeError, match="cannot do step 'prune_l1_unstructured'"):
        rt.quantize(exp, Prune(), [], keep_float=[], workdir=tmp_path)


def test_a_file_that_is_not_an_ovz_is_refused_clearly(rt, tmp_path: Path) -> None:
    bad = tmp_path / "bad.ovz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(ModelLoadError, match="not a modelpress OpenVINO artifact"):
        rt.load(bad, threads=1)
    other = tmp_path / "other.ovz"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("modelpress.json", json.dumps({"format": "something-else"}))
        z.writestr("model.xml", "")
        z.writestr("model.bin", b"")
    with pytest.raises(ModelLoadError, match="unknown artifact format"):
        rt.load(other, threads=1)


def test_the_artifact_serves_with_openvino_alone_as_the_docs_show(rt, mlp, tmp_path: Path) -> None:
    spec, data, model = mlp
    x = data.eval_inputs[:8]
    exp = rt.export(model, (x[:2],), ["x"], tmp_path)
    rt.save(exp, tmp_path / "m.ovz")
    torch.save(x, tmp_path / "x.pt")
    ref = model(x).detach()
    # A fresh interpreter that never imports modelpress (asserted) — the three lines of the module docstring.
    script = textwrap.dedent(f"""
        import sys, zipfile, numpy as np, openvino as ov
        z, core = zipfile.ZipFile({str(tmp_path / 'm.ovz')!r}), ov.Core()
        m = core.compile_model(core.read_model(z.read("model.xml").decode(),
                                               ov.Tensor(np.frombuffer(z.read("model.bin"), np.uint8))), "CPU")
        x = np.load({str(tmp_path / 'x.npy')!r})
        np.save({str(tmp_path / 'y.npy')!r}, m(x)[0])
        assert not any(k.startswith("modelpress") for k in sys.modules)
    """)
    import numpy as np

    np.save(tmp_path / "x.npy", x.numpy())
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert torch.allclose(torch.from_numpy(np.load(tmp_path / "y.npy")), ref, atol=_served_atol())


def test_without_openvino_the_runtime_says_why_and_refuses_to_load(tmp_path: Path) -> None:
    # A fresh interpreter where importing openvino fails, as on a worker without the extra installed.
    script = textwrap.dedent(f"""
        import sys
        sys.modules["openvino"] = None  # makes `import openvino` raise ImportError
        from modelpress.optimize.runtimes.base import RuntimeUnavailableError
        from modelpress.optimize.runtimes.registry import available_runtimes, get_runtime
        reason = available_runtimes()["openvino"]
        print(reason)
        try:
            get_runtime("openvino").load({str(tmp_path / 'm.ovz')!r}, threads=1)
        except RuntimeUnavailableError as e:
            print("refused:", e)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, second = proc.stdout.strip().splitlines()[-2:]
    assert first.startswith("openvino is not installed") and "pip install 'modelpress[openvino]'" in first
    assert second.startswith("refused: openvino is not installed")


class _FlattenThenLinear(torch.nn.Module):
    """Makes a tensor of its batch size in forward (as BERT's attention mask does): a size a trace of the
    exported graph turns into the example's constant."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(x.shape[0], -1)) + torch.zeros(x.shape[0], 3)


def test_an_exported_graph_keeps_a_dynamic_batch_in_openvino_and_matches_torch_at_every_batch(rt, tmp_path) -> None:
    # The HF and .pt2 sources hand over torch.export graphs re-modularized into an FX GraphModule; traced by
    # convert_model, their sym_size reads became the example's batch of 2 (issue 22's hf: MiniLM crash).
    from modelpress.optimize.sources.export import modularize

    eager = _FlattenThenLinear().eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    example = torch.randn(2, 3, 4)
    graph = modularize(torch.export.export(eager, (example,), dynamic_shapes=({0: batch},)).module())
    assert isinstance(graph, torch.fx.GraphModule)
    exp = rt.export(graph, (example,), ["x"], tmp_path)
    assert "torch.export" in exp.meta["exporter"]
    rt.save(exp, tmp_path / "m.ovz")
    served = rt.load(tmp_path / "m.ovz", threads=1)
    for b in (1, 5, 32):
        x = torch.randn(b, 3, 4)
        out = served(x)
        assert out.shape == (b, 3)
        torch.testing.assert_close(out, eager(x).detach(), atol=_served_atol(), rtol=1e-3)


def test_a_converted_model_with_a_fixed_batch_is_refused_before_any_metric_is_computed(rt) -> None:
    import openvino as ov

    from modelpress.optimize.runtimes.openvino_rt import _check_batch_follows_input

    fixed = ov.convert_model(_FlattenThenLinear().eval(), example_input=(torch.randn(2, 3, 4),),
                             input=[("x", ov.PartialShape([2, 3, 4]), ov.Type.f32)])
    with pytest.raises(RecipeError, match="batch"):
        _check_batch_follows_input(ov, fixed, (torch.randn(2, 3, 4),))

"""Built-in weights are the same bytes on every CPU (issue 20 item 12).

digits_cnn, seq_lstm and seq_gru ship trained weights as package data, and their content id covers the
file's bytes; the seed mlp ships nothing: its weights and inputs are drawn CPU-independently by code the
content id covers (its module's sha256), and the bytes are pinned here.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import modelpress.zoo.models as zoo
from modelpress.optimize.measure import compute_metric, predict
from modelpress.optimize.sources import get_source
from modelpress.optimize.sources.registered import materialize, registered_models, resolve_model
from modelpress.zoo import builtin_weights
from modelpress.zoo.builtin_weights import SHIPPED_WEIGHTS, builtin_content_id, shipped_weights_name

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "src" / "modelpress" / "zoo" / "data"
SHIPPED = ("digits_cnn", "seq_lstm", "seq_gru")
# README/docs/benchmarks.md report 0.9958 (digits_cnn, 239 of 240), 0.9790 (seq_lstm) and 1.0000 (seq_gru,
# 1,000 rows each); a floor one notch under each fails if other weights (say, an untrained model) ship.
FLOORS = {"digits_cnn": 0.99, "seq_lstm": 0.97, "seq_gru": 0.99}


def _accuracy(name: str) -> float:
    spec = resolve_model(name)
    model, _ = materialize(spec, weights=None, max_bytes=1 << 30, cache_dir=None)
    data = spec.data()
    return compute_metric("accuracy", predict(model, data.eval_inputs), labels=data.eval_labels, reference=None)


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_weights_reach_the_documented_held_out_accuracy_and_the_sidecar_says_so(name):
    acc = _accuracy(name)
    assert acc >= FLOORS[name], f"{name}: held-out accuracy {acc:.4f} is under {FLOORS[name]}"
    sidecar = json.loads((DATA / shipped_weights_name(name)).with_suffix(".json").read_text())
    assert sidecar["held_out_accuracy"] == pytest.approx(acc, abs=1 / sidecar["held_out_rows"])
    assert sidecar["sha256"] == hashlib.sha256((DATA / shipped_weights_name(name)).read_bytes()).hexdigest()
    assert sidecar["host"]["torch"] and sidecar["host"]["cpu_flags"]


def test_a_worker_loads_the_shipped_weights_and_never_trains(monkeypatch, tmp_path):
    def refuse(*a, **k):
        raise AssertionError("a worker trained a built-in model")

    monkeypatch.setattr(zoo, "train_classifier", refuse)
    for name in SHIPPED:
        spec = resolve_model(name)
        model, _ = materialize(spec, weights=None, max_bytes=1 << 30, cache_dir=tmp_path)
        shipped = load_file(str(DATA / shipped_weights_name(name)))
        assert shipped.keys() == model.state_dict().keys()
        assert all(torch.equal(shipped[k], v) for k, v in model.state_dict().items()), name
        assert spec.version == 2
    assert list(tmp_path.iterdir()) == [], "nothing is trained or cached on the worker"


def test_another_weights_file_gives_another_content_id_on_both_sides_and_is_what_the_worker_loads(
        monkeypatch, tmp_path):
    source = get_source("registered")
    before_producer = builtin_content_id("digits_cnn")
    before_worker = source.materialize("digits_cnn", weights=None)[2]
    before_gru = builtin_content_id("seq_gru")
    for name in SHIPPED:
        (tmp_path / shipped_weights_name(name)).write_bytes((DATA / shipped_weights_name(name)).read_bytes())
    # A copy trained elsewhere: the same tensors but for one value's last bit, as another CPU would give.
    sd = load_file(str(tmp_path / shipped_weights_name("digits_cnn")))
    w = sd["classifier.3.weight"]
    w.view(torch.int32)[0, 0] ^= 1
    save_file(sd, str(tmp_path / shipped_weights_name("digits_cnn")))
    monkeypatch.setattr(builtin_weights, "data_dir", lambda: tmp_path)

    after_producer = builtin_content_id("digits_cnn")
    model, _, after_worker = source.materialize("digits_cnn", weights=None)
    assert after_producer != before_producer and after_worker != before_worker
    assert after_worker == after_producer
    assert torch.equal(model.state_dict()["classifier.3.weight"], w)
    # The other models' files are byte-identical copies: their ids do not move.
    assert builtin_content_id("seq_gru") == source.materialize("seq_gru", weights=None)[2] == before_gru
    # The spec-level id (no entry-point name, as the distillation teacher uses) moves too.
    spec = resolve_model("digits_cnn")
    patched_spec_id = materialize(spec, weights=None, max_bytes=1 << 30, cache_dir=None)[1]
    monkeypatch.undo()
    assert materialize(spec, weights=None, max_bytes=1 << 30, cache_dir=None)[1] != patched_spec_id


def test_a_missing_weights_file_is_a_clear_load_error_and_no_content_id(monkeypatch, tmp_path):
    monkeypatch.setattr(builtin_weights, "data_dir", lambda: tmp_path)
    assert builtin_content_id("seq_lstm") is None  # a broken install never shares a working one's results
    with pytest.raises(zoo.ModelLoadError, match="builtin-seq_lstm-v2.safetensors are missing"):
        materialize(resolve_model("seq_lstm"), weights=None, max_bytes=1 << 30, cache_dir=None)


# The seed mlp's bytes (zoo.seeded_linear_init, zoo._randn), hashed as _MLP_FINGERPRINT does. Another value
# here means other weights or inputs: bump mlp_spec's version with it (the content id moves by itself, with
# zoo/models.py's bytes).
MLP_WEIGHTS_SHA256 = "99e9e4a4b865d5c62e787006d7fb2a6d7412508600f46c1b40506d5b8ede6b5d"
MLP_DATA_SHA256 = "a873a6ea4ac9affed87d7cfa1e6106381098b28a96cec45eda5085988cb88273"

_MLP_FINGERPRINT = """
import hashlib, json, sys
import torch
from modelpress.optimize.sources.registered import materialize, resolve_model

def digest(named):
    h = hashlib.sha256()
    for key, t in named:
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()

torch.manual_seed(int(sys.argv[1]))  # whatever the process drew before must not matter
torch.set_num_threads(int(sys.argv[2]))
spec = resolve_model("mlp")
model, _ = materialize(spec, weights=None, max_bytes=1 << 30, cache_dir=None)
data = spec.data()
print(json.dumps({
    "capability": torch.backends.cpu.get_cpu_capability(),
    "weights": digest(model.state_dict().items()),
    "data": digest([("eval", data.eval_inputs), ("calibration", data.calib_inputs), ("train", data.train_inputs),
                    ("validation", data.val_inputs)] + [(f"input{b}", spec.make_input(b)) for b in (1, 64)]),
}))
"""


def _numpy_dispatched_features() -> str:
    try:  # numpy 2: the SIMD targets its kernels dispatch on, all of which NPY_DISABLE_CPU_FEATURES may turn off
        from numpy._core._multiarray_umath import __cpu_dispatch__
    except ImportError:
        from numpy.core._multiarray_umath import __cpu_dispatch__
    return " ".join(__cpu_dispatch__)


def test_the_mlp_weights_and_inputs_are_the_same_bytes_under_every_cpu_kernel():
    # torch picks its kernels by CPU (ATEN_CPU_CAPABILITY forces the portable ones, as an old CPU would
    # get); numpy too (NPY_DISABLE_CPU_FEATURES). nn.Linear's seeded init and torch.randn gave other bytes
    # under "default" than under AVX2; the mlp's weights and inputs must not.
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "NPY_DISABLE_CPU_FEATURES")}
    runs = {
        "host default": (env, ("0", "1")),
        "ATEN_CPU_CAPABILITY=default": ({**env, "ATEN_CPU_CAPABILITY": "default"}, ("1", "2")),
        "and numpy's SIMD off": ({**env, "ATEN_CPU_CAPABILITY": "default",
                                   "NPY_DISABLE_CPU_FEATURES": _numpy_dispatched_features()}, ("2", "1")),
    }
    got = {}
    for label, (run_env, args) in runs.items():
        out = subprocess.run([sys.executable, "-c", _MLP_FINGERPRINT, *args], env=run_env, capture_output=True,
                             text=True, check=True)
        got[label] = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["ATEN_CPU_CAPABILITY=default"]["capability"] == "DEFAULT"
    host = got["host default"]
    for label, fp in got.items():
        assert fp["weights"] == host["weights"], f"the mlp's weights differ under {label} ({fp['capability']}) " \
                                                 f"from the host default ({host['capability']})"
        assert fp["data"] == host["data"], f"the mlp's inputs differ under {label} ({fp['capability']}) " \
                                           f"from the host default ({host['capability']})"
    # ...and are the bytes every other machine draws (another CPU family cannot be forced here).
    assert (host["weights"], host["data"]) == (MLP_WEIGHTS_SHA256, MLP_DATA_SHA256)


def test_the_mlp_weights_follow_nn_linear_default_init_and_do_not_reseed_the_global_rng(tmp_path):
    spec = resolve_model("mlp")
    models, after = [], []
    for seed in (123, 456):
        torch.manual_seed(seed)
        models.append(materialize(spec, weights=None, max_bytes=1 << 30, cache_dir=tmp_path)[0])
        after.append(torch.rand(4))
    # v1 called torch.manual_seed(0) inside every materialize: what a job drew next was reset behind its back.
    assert not torch.equal(*after), "materializing the mlp reseeded torch's global RNG"
    model = models[0]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), models[1].state_dict().values()))
    assert spec.version == 2 and spec.shipped_weights is None
    for layer in (model.fc1, model.fc2):  # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as nn.Linear draws them
        bound = layer.in_features ** -0.5
        for p in (layer.weight, layer.bias):
            assert float(p.abs().max()) <= bound and float(p.abs().max()) > 0.99 * bound
            assert float(p.std()) == pytest.approx(bound / 3 ** 0.5, rel=0.1)
    assert list(tmp_path.iterdir()) == [], "nothing is cached on the worker"
    x = spec.data().eval_inputs
    assert float(x.mean()) == pytest.approx(0.0, abs=0.01) and float(x.std()) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("name", ["mlp", *SHIPPED])
def test_the_producer_and_the_worker_give_one_content_id_for_each_built_in(name):
    worker = get_source("registered").materialize(name, weights=None)[2]
    assert worker == builtin_content_id(name)
    assert len(worker) == 64


def test_an_allow_listed_factory_path_to_a_shipped_model_is_keyed_by_the_same_weights(monkeypatch):
    factory = "modelpress.zoo.models:digits_cnn_spec"
    # An editable install maps no top-level package to its distribution; a wheel install does.
    monkeypatch.setattr(builtin_weights, "packages_distributions", lambda: {"modelpress": ["modelpress"]})
    worker = get_source("registered").materialize(factory, weights=None, allowlist=("modelpress",))[2]
    assert worker == builtin_content_id(factory) != builtin_content_id("digits_cnn")
    # The weights part comes from the same file as the entry point's: change it and both would move.
    assert SHIPPED_WEIGHTS[factory] == resolve_model("digits_cnn").shipped_weights


def test_every_registered_factory_with_shipped_weights_names_the_file_its_spec_loads():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="modelpress.models")}
    assert set(SHIPPED) <= set(registered_models())
    for name in SHIPPED:
        spec = resolve_model(name)
        assert SHIPPED_WEIGHTS[eps[name]] == spec.shipped_weights == shipped_weights_name(name)
    assert resolve_model("mlp").shipped_weights is None and eps["mlp"] not in SHIPPED_WEIGHTS


def test_the_content_id_is_computed_without_importing_torch():
    code = ("import sys; from modelpress.zoo.builtin_weights import builtin_content_id as b; "
            "ids = [b(n) for n in ('mlp', 'digits_cnn', 'seq_lstm', 'seq_gru')]; "
            "print('torch' in sys.modules, len(set(ids)), all(len(i) == 64 for i in ids))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "4", "True"]


def test_pyproject_ships_every_weights_file_and_its_sidecar_as_package_data():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["modelpress"]
    shipped = sorted(p.name for p in DATA.glob("builtin-*"))
    assert len(shipped) == 2 * len(SHIPPED)
    for name in shipped:
        assert any(fnmatch.fnmatch(f"zoo/data/{name}", g) for g in globs), name
    # The installed package (editable here) finds each file where the zoo looks for it.
    for file in SHIPPED_WEIGHTS.values():
        assert builtin_weights.shipped_weights_file(file).is_file()
    total = sum((DATA / f).stat().st_size for f in SHIPPED_WEIGHTS.values())
    assert total < 3_000_000, f"the shipped weights grew to {total:,} bytes"

"""Artifacts are written atomically, reload with one call, and are never unpickled."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

import modelpress
from modelpress.optimize.artifacts import atomic_write_bytes
from modelpress.errors import ModelLoadError
from modelpress.optimize.job import optimize_model
from modelpress.optimize.recipes import Recipe, resolve_recipe
from modelpress.optimize.weights import read_state_dict
from modelpress.zoo.models import SeedMLP


# dynamic-int8 without its default budget: every layer int8, whatever the MLP's agreement (0.973 < 0.99).
ALL_INT8 = Recipe.from_dict({"name": "dynamic-int8", "steps": [{"type": "quantize_dynamic"}]})


def test_a_dynamic_int8_artifact_reloads_and_gives_the_outputs_the_worker_measured(tmp_path):
    torch.set_num_threads(1)
    r = optimize_model(model_name="mlp", recipe=ALL_INT8, engine="fbgemm", store=tmp_path, warmup=1, runs=3)
    model = modelpress.load(r.artifact_path)
    assert any("quantized" in type(m).__module__ for m in model.modules())
    x = torch.randn(8, 512)
    from modelpress.optimize.artifacts import read_manifest

    manifest, _ = read_manifest(r.artifact_path)
    assert manifest["engine"] == "fbgemm" and manifest["recipe"]["name"] == "dynamic-int8"
    again = modelpress.load(r.artifact_path)
    assert torch.equal(model(x), again(x))
    assert r.size_after_bytes == os.path.getsize(r.artifact_path)
    assert 3.5 <= r.size_before_bytes / r.size_after_bytes <= 4.2


def test_the_same_job_twice_reuses_the_stored_result_and_artifact(tmp_path):
    kw = dict(model_name="mlp", recipe=resolve_recipe("dynamic-int8"), engine="fbgemm", store=tmp_path, warmup=1, runs=3)
    first = optimize_model(**kw)
    mtime = os.stat(first.artifact_path).st_mtime_ns
    second = optimize_model(**kw)
    assert second.reused and not first.reused
    assert second.artifact_path == first.artifact_path and os.stat(second.artifact_path).st_mtime_ns == mtime


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/modelpress-pwned",))


def test_a_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path):
    marker = "/tmp/modelpress-pwned"
    if os.path.exists(marker):
        os.unlink(marker)
    evil = tmp_path / "evil.pt"
    torch.save({"fc1.weight": _Boom()}, evil)  # torch.save pickles the object
    with pytest.raises(ModelLoadError) as refused:
        read_state_dict(evil, max_bytes=1 << 20)
    # What was refused, and how to fix the file; never torch's advice to turn the check off.
    assert "was refused: it holds code" in str(refused.value) and "posix.system" in str(refused.value)
    assert "safetensors" in str(refused.value) and "weights_only" not in str(refused.value)
    assert not os.path.exists(marker)
    evil2 = tmp_path / "evil2.pt"
    evil2.write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(ModelLoadError) as refused2:
        read_state_dict(evil2, max_bytes=1 << 20)
    assert "weights_only" not in str(refused2.value)
    assert not os.path.exists(marker)


def test_weights_over_the_size_limit_are_refused_before_reading(tmp_path):
    p = tmp_path / "w.pt"
    torch.save(SeedMLP().state_dict(), p)
    with pytest.raises(ModelLoadError, match="over the limit"):
        read_state_dict(p, max_bytes=1000)


def test_an_interrupted_atomic_write_leaves_no_file_behind(tmp_path):
    target = tmp_path / "a.mpz"

    def crash(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_bytes(target, crash)
    assert list(tmp_path.iterdir()) == []


def test_reuse_false_measures_again_instead_of_answering_from_the_stored_result(tmp_path):
    kw = dict(model_name="mlp", recipe=resolve_recipe("dynamic-int8"), engine="fbgemm", store=tmp_path, warmup=1, runs=3)
    first = optimize_model(**kw)
    again = optimize_model(**kw, reuse=False)
    assert not again.reused
    # Fresh timings: the chance that 2×3 timed runs repeat to the nanosecond is nil.
    assert again.latency_after != first.latency_after

"""The runtime registry: names, clear errors, availability without importing toolkits."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modelpress.errors import RecipeError, UserInputError
from modelpress.optimize.recipes import Recipe, resolve_recipe, with_runtime
from modelpress.optimize.runtimes.base import Runtime, RuntimeUnavailableError
from modelpress.optimize.runtimes.registry import (
    get_runtime,
    installed_runtimes,
    require_runtime,
    runtime_for_path,
    runtime_names,
)


def test_every_registered_runtime_implements_the_interface_and_is_available_here() -> None:
    assert runtime_names() == ["onnxruntime", "openvino", "torch"]
    for n in runtime_names():
        rt = get_runtime(n)
        assert isinstance(rt, Runtime) and rt.name == n
        assert rt.is_available() is None, (n, rt.is_available())
        assert rt.versions() and all(rt.versions().values())
    assert installed_runtimes() == {n: None for n in runtime_names()}


def test_an_unknown_runtime_names_the_known_ones() -> None:
    with pytest.raises(RecipeError, match="unknown runtime 'tensorrt'; known runtimes: onnxruntime, openvino, torch"):
        get_runtime("tensorrt")
    with pytest.raises(RecipeError, match="recipe.runtime: .*unknown runtime 'tvm'; known: onnxruntime, openvino, torch, auto"):
        Recipe.from_dict({"name": "x", "steps": [{"type": "quantize_dynamic"}], "runtime": "tvm"})


def test_an_unavailable_runtime_gives_a_clear_error_that_is_not_retried(monkeypatch) -> None:
    rt = get_runtime("onnxruntime")
    monkeypatch.setattr(type(rt), "is_available", lambda self: "onnxruntime not installed (pip install 'modelpress[onnx]')")
    with pytest.raises(RuntimeUnavailableError, match="runtime 'onnxruntime' is not usable on this worker: "
                                                      "onnxruntime not installed") as e:
        require_runtime("onnxruntime")
    assert isinstance(e.value, UserInputError)  # the task fails the job at once, without retry


def test_a_missing_package_is_reported_by_the_import_free_check(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else real(name, *a))
    assert installed_runtimes()["openvino"] == "nncf not installed"


def test_the_import_free_check_imports_no_toolkit() -> None:
    code = ("import sys; from modelpress.optimize.runtimes.registry import installed_runtimes; installed_runtimes();"
            "print(sorted(m for m in ('torch', 'onnxruntime', 'openvino', 'nncf') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_the_runtime_of_an_artifact_is_found_by_its_suffix() -> None:
    assert runtime_for_path("x/a.mpz").name == "torch"
    assert runtime_for_path("x/a.onnx").name == "onnxruntime"
    assert runtime_for_path("x/a.ovz").name == "openvino"
    assert runtime_for_path("x/a.bin") is None


def test_runtime_and_objective_round_trip_through_json_and_keep_old_hashes() -> None:
    plain = resolve_recipe("dynamic-int8")
    assert "runtime" not in plain.to_dict()  # a torch recipe hashes as it always did
    auto = Recipe.from_dict({**plain.to_dict(), "runtime": "auto", "objective": "latency_b1"})
    assert Recipe.from_json(auto.to_json()) == auto and auto.sha256 != plain.sha256
    assert with_runtime(plain, "onnxruntime").runtime == "onnxruntime"
    assert with_runtime(plain, "onnxruntime").sha256 != with_runtime(plain, "openvino").sha256
    with pytest.raises(RecipeError, match="unknown runtime"):
        with_runtime(plain, "nope")

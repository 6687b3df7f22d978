"""Runtimes in manifests and at submit: applied to every job, a bad name refused with its line, no row written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modelpress.manifest import parse_manifest
from modelpress.manifest_yaml import ManifestError
from modelpress.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


def _parse(text: str, settings: Settings):
    return parse_manifest(textwrap.dedent(text), settings=settings, base_dir=Path("."), filename="m.yaml")


def test_a_manifest_runtime_applies_to_its_jobs_and_a_model_can_override_it(settings) -> None:
    plan = _parse("""\
        defaults: {recipes: [dynamic-int8], backends: [fbgemm], runtime: auto}
        models:
          - mlp
          - {model: digits_cnn, runtime: onnxruntime}
        """, settings)
    got = {(r.model, r.recipe.runtime) for r in plan.requests}
    assert got == {("mlp", "auto"), ("digits_cnn", "onnxruntime")}
    assert len({r.recipe.sha256 for r in plan.requests}) == 2


def test_an_unknown_runtime_in_a_manifest_is_refused_naming_the_line(settings) -> None:
    with pytest.raises(ManifestError) as e:
        _parse("""\
            defaults: {recipes: [dynamic-int8], backends: [fbgemm]}
            models:
              - {model: mlp, runtime: tensorrt}
            """, settings)
    problems = [i.format("m.yaml") for i in e.value.issues]
    assert len(problems) == 1 and problems[0].startswith("m.yaml:3: models[0].runtime")
    assert "unknown runtime 'tensorrt'" in problems[0]


def _run(args, home):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPRESS_")}
    env["MODELPRESS_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "modelpress", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_submit_refuses_an_unknown_runtime_with_the_known_ones_and_writes_no_row(tmp_path) -> None:
    res = _run(["submit", "--model", "mlp", "--recipe", "dynamic-int8", "--backend", "fbgemm", "--runtime", "tvm"],
               tmp_path)
    assert res.returncode == 2
    assert "unknown runtime 'tvm'; known: onnxruntime, openvino, torch, auto" in res.stderr
    assert json.loads(_run(["jobs", "--format", "json"], tmp_path).stdout) == []

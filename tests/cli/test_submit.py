"""Bad input at submit time is refused with a clear message and writes no row."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _run(args, home, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPRESS_")}
    env.update({"MODELPRESS_HOME": str(home), **extra})
    return subprocess.run([sys.executable, "-m", "modelpress", *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet9000", "--recipe", "dynamic-int8", "--backend", "fbgemm"], "unknown model 'resnet9000'"),
        (["--model", "mlp", "--recipe", "int3-magic", "--backend", "fbgemm"], "unknown recipe 'int3-magic'"),
        (["--model", "mlp", "--recipe", "dynamic-int8", "--backend", "tpu"], "unknown backend 'tpu'"),
        (["--model", "os:system", "--recipe", "dynamic-int8", "--backend", "fbgemm"], "is not allowed"),
        (["--model", "mlp", "--recipe", "dynamic-int8", "--backend", "fbgemm", "--weights", "/nonexistent.pt"],
         "does not exist"),
    ],
)
def test_submit_refuses_bad_input_with_a_clear_message_and_no_row(tmp_path, args, message):
    res = _run(["submit", *args], tmp_path)
    assert res.returncode == 2
    assert message in res.stderr
    listed = _run(["jobs", "--format", "json"], tmp_path)
    assert json.loads(listed.stdout) == []


def test_a_recipe_file_with_an_unknown_field_is_refused_naming_the_field(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nsteps:\n  - type: quantize_dynamic\n    per_chanel: true\n")
    res = _run(["submit", "--model", "mlp", "--recipe", str(recipe), "--backend", "fbgemm"], tmp_path)
    assert res.returncode == 2
    assert "steps.0.per_chanel" in res.stderr


def test_a_submitted_job_is_listed_as_json_with_every_field_scripts_need(tmp_path):
    res = _run(["submit", "--model", "mlp", "--recipe", "dynamic-int8", "--backend", "qnnpack"], tmp_path)
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip()
    (row,) = json.loads(_run(["jobs", "--format", "json"], tmp_path).stdout)
    assert row["id"] == job_id and row["status"] == "queued" and row["backend"] == "qnnpack"
    for field in ("size_before_bytes", "size_after_bytes", "latency_before_median_ms", "latency_after_p90_ms",
                  "latency_batch_size", "latency_threads", "metric_name", "metric_before", "metric_after",
                  "artifact_uri", "worker_host", "worker_arch", "engine_used", "torch_version", "error",
                  "attempts", "recipe_json", "model_sha256", "created_at", "finished_at"):
        assert field in row
    shown = json.loads(_run(["show", job_id[:8]], tmp_path).stdout)
    assert shown["id"] == job_id

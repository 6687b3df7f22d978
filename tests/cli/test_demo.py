"""The README's first command: the demo on the embedded default, through real worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_demo_optimizes_both_zoo_models_through_real_workers_and_prints_measured_bytes(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPRESS_")}
    env["MODELPRESS_HOME"] = str(tmp_path / "home")
    res = subprocess.run([sys.executable, "-m", "modelpress", "demo"], env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "mlp" in res.stdout and "digits_cnn" in res.stdout
    rows = json.loads(subprocess.run([sys.executable, "-m", "modelpress", "jobs", "--format", "json"], env=env,
                                     capture_output=True, text=True, check=True).stdout)
    assert {r["model_name"] for r in rows} == {"mlp", "digits_cnn"}
    # Every built-in recipe carries a 1 % budget: the guard rejects the MLP's lossy results (prune50 leaves
    # ~0.46 top-1 agreement) with their reason, and keeps the digits CNN's dynamic int8 (no accuracy lost).
    assert all(r["status"] in ("succeeded", "rejected") for r in rows), [r["error"] for r in rows]
    assert all("more than the budget allows" in r["error"] for r in rows if r["status"] == "rejected")
    assert {(r["model_name"], r["recipe_name"], r["status"]) for r in rows if r["backend"] == "fbgemm"} >= {
        ("mlp", "prune50-dynamic-int8", "rejected"), ("digits_cnn", "dynamic-int8", "succeeded")}
    for r in rows:
        # Every size is the byte count of a real file (never a parameter count).
        assert r["size_after_bytes"] == os.path.getsize(r["artifact_uri"])
        assert r["size_after_bytes"] > 0 and r["latency_after_median_ms"] > 0
        assert f"{r['size_before_bytes']:,}" in res.stdout
    mlp = next(r for r in rows if r["model_name"] == "mlp" and r["recipe_name"] == "dynamic-int8" and r["backend"] == "fbgemm")
    assert 3.5 <= mlp["size_before_bytes"] / mlp["size_after_bytes"] <= 4.2
    cnn = next(r for r in rows if r["model_name"] == "digits_cnn" and r["recipe_name"] == "dynamic-int8")
    assert cnn["metric_name"] == "accuracy" and cnn["metric_before"] > 0.9
    assert {r["backend"] for r in rows} == {"fbgemm", "qnnpack"}
    assert all(r["engine_used"] == r["backend"] for r in rows)

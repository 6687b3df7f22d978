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
    # What modelpress is for: the digits CNN's int8 recipes keep the 1 % budget with real gains, and the MLP's
    # 50 % unstructured pruning (~0.45 top-1 agreement) is rejected with its reason.
    assert all(r["status"] in ("succeeded", "rejected") for r in rows), [r["error"] for r in rows]
    assert all("more than the budget allows" in r["error"] for r in rows if r["status"] == "rejected")
    assert {(r["model_name"], r["recipe_name"], r["status"]) for r in rows if r["backend"] == "fbgemm"} == {
        ("digits_cnn", "static-int8", "succeeded"), ("digits_cnn", "prune50-finetune-static-int8", "succeeded"),
        ("mlp", "prune50-dynamic-int8", "rejected")}
    for r in rows:
        # Every size is the byte count of a real file (never a parameter count).
        assert r["size_after_bytes"] == os.path.getsize(r["artifact_uri"])
        assert r["size_after_bytes"] > 0 and r["latency_after_median_ms"] > 0
        assert f"{r['size_before_bytes']:,}" in res.stdout
    pruned = next(r for r in rows if r["recipe_name"] == "prune50-finetune-static-int8")
    # Channels really removed, then int8: several times smaller and faster at batch 64, accuracy kept.
    assert pruned["metric_name"] == "accuracy" and pruned["metric_after"] >= pruned["metric_before"] - 0.01
    assert pruned["size_before_bytes"] / pruned["size_after_bytes"] > 4
    assert pruned["latency_before_median_ms"] / pruned["latency_after_median_ms"] > 2
    static = next(r for r in rows if r["recipe_name"] == "static-int8")
    assert static["size_before_bytes"] / static["size_after_bytes"] > 3
    assert {r["backend"] for r in rows} == {"fbgemm", "qnnpack"}
    assert all(r["engine_used"] == r["backend"] for r in rows)

"""A program with several outputs through the queue: one manifest, Redis, a real fbgemm worker, PostgreSQL.

The manifest names the output that carries the budget (``primary_output``); the job row reports that output's
metric and keeps every output's before and after; a training recipe for the same program fails on the worker
(only the program's run shows it has several outputs) while the other job goes on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelpress.cli import wait_for
from tests.conftest import settings_from_env, submit_manifest
from tests.own_models_fixtures import build_facenet

pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)
def test_a_manifest_names_the_primary_output_and_the_row_keeps_every_outputs_numbers(queue, tmp_path: Path) -> None:
    env, workers = queue
    settings = settings_from_env(env)
    files = build_facenet(tmp_path)
    manifest = tmp_path / "faces.yaml"
    entry = {"model": "export:face.pt2", "primary_output": "face", "budget": {"max_drop": 0.05},
             "data": {"eval": "eval.safetensors", "calibration": "calib.safetensors", "train": "train.safetensors"}}
    manifest.write_text(json.dumps({"defaults": {"recipes": ["static-int8", "qat-int8"], "backends": ["fbgemm"]},
                                    "models": [entry]}))
    ids = submit_manifest(env, workers, manifest)
    done = {r["recipe_name"]: r for r in wait_for(settings, ids, timeout=600, quiet=True)}
    ptq, qat = done["static-int8"], done["qat-int8"]
    assert ptq["status"] == "succeeded", ptq["error"]
    assert ptq["metric_name"] == "accuracy[face]" and ptq["metric_before"] > 0.9
    outputs = ptq["measurements"]["extra"]["outputs"]
    assert [(o["output"], o["metric"], o["primary"]) for o in outputs] == [
        ("box", "cosine", False), ("landmarks", "cosine", False), ("face", "accuracy", True)]
    assert outputs[2]["after"] == ptq["metric_after"]
    assert qat["status"] == "failed" and "returns 3 (box, landmarks, face)" in qat["error"], qat
    assert qat["attempts"] == 1  # a user error: not retried
    assert files["program"].is_file()

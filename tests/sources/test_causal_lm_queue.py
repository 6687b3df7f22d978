"""A causal LM through the queue: a manifest, Redis, a real fbgemm worker, PostgreSQL (issue 23 items 1 and 3).

The folder is the coverage matrix's Llama saved as its users save it, with JSONL text. Both weight-only
recipes run on the worker (``auto``: torch and OpenVINO candidates) and the rows report perplexity, its
next-token agreement and decode speed; a recipe a causal LM cannot take is refused at submit, with the line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modelpress.cli import wait_for
from modelpress.zoo.families import build_family, family
from tests.conftest import settings_from_env, submit_manifest

pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)
def test_both_weight_only_recipes_run_on_a_worker_and_a_recipe_it_cannot_take_is_refused_at_submit(queue, tmp_path: Path
                                                                                                   ) -> None:
    env, workers = queue
    settings = settings_from_env(env)
    built = build_family(family("Llama"), tmp_path)
    entry = {"model": built.model, "data": built.data, "max_length": built.max_length}
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"defaults": {"recipes": ["static-int8"], "backends": ["fbgemm"]}, "models": [entry]}))
    refused = subprocess.run([sys.executable, "-m", "modelpress", "submit", str(bad)], env=env, capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode != 0 and "quantize_weight_only" in refused.stderr, refused.stderr

    manifest = tmp_path / "lms.yaml"
    manifest.write_text(json.dumps({"defaults": {"recipes": ["int8-weight-only", "int4-weight-only"],
                                                 "backends": ["fbgemm"]}, "models": [entry]}))
    ids = submit_manifest(env, workers, manifest)
    done = {r["recipe_name"]: r for r in wait_for(settings, ids, timeout=600, quiet=True)}
    for name, row in done.items():
        assert row["status"] in ("succeeded", "rejected"), (name, row["error"])
        assert row["metric_name"] == "perplexity" and row["metric_before"] > 1
        lm = row["measurements"]["extra"]["lm"]
        assert 0 < lm["next_token_agreement"] <= 1 and lm["latency"]["chosen"]["decode_tokens_per_s"] > 0
        assert row["latency_after_median_ms"] > 0  # the prefill, timed afresh beside the float model
        assert {c["runtime"] for c in row["measurements"]["extra"]["candidates"]} == {"torch", "openvino"}
    assert done["int8-weight-only"]["status"] == "succeeded", done["int8-weight-only"]["error"]

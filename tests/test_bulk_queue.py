"""Bulk on the real stack: a 20-job manifest through Redis, PostgreSQL and two real worker processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import torch

from modelpress.api import Producer
from modelpress.cli import wait_for
from modelpress.models_db import list_jobs, make_engine, make_sessionmaker
from modelpress.zoo.models import SeedMLP
from modelpress.store import ArtifactStore
from tests.conftest import settings_from_env

# 4 recipes × 2 backends for the built-in MLP and for an MLP with weights of its own (whose zero budget
# rejects every result), 2 × 2 for the digits CNN: 20 jobs, mostly quick MLP ones.
MANIFEST = """\
name: bulk-test
defaults:
  recipes:
    - dynamic-int8
    - prune50-dynamic-int8
    - l1-sparse50
    - name: prune30-dynamic-int8-per-tensor
      steps:
        - {type: prune_l1_unstructured, amount: 0.3, scope: global}
        - {type: quantize_dynamic, per_channel: false}
  backends: [fbgemm, qnnpack]
models:
  - mlp
  - model: mlp
    weights: mlp-seed7.pt
    budget: {max_drop: 0.0}
  - model: digits_cnn
    recipes: [dynamic-int8, prune50-dynamic-int8]
"""

RESULT_COLUMNS = ("size_before_bytes", "size_after_bytes", "latency_batch_size", "latency_threads",
                  "latency_before_median_ms", "latency_before_p90_ms", "latency_after_median_ms",
                  "latency_after_p90_ms", "metric_name", "metric_before", "metric_after", "measurements",
                  "artifact_uri", "worker_host", "worker_arch", "engine_used", "torch_version",
                  "modelpress_version", "model_sha256", "started_at", "finished_at")


def _cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelpress", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _batch_rows(settings, batch_id: str) -> list[dict]:
    engine = make_engine(settings.effective_database_url)
    try:
        with make_sessionmaker(engine)() as s:
            return [j.to_dict() for j in list_jobs(session=s, batch_id=batch_id, limit=None)]
    finally:
        engine.dispose()


def _queued_messages(settings) -> dict[str, int]:
    import redis

    r = redis.Redis.from_url(settings.broker_url)
    try:
        return {b: r.llen(f"{settings.queue_prefix}{b}") for b in ("fbgemm", "qnnpack")}
    finally:
        r.close()


def test_a_twenty_job_manifest_runs_on_both_backends_and_resubmitting_it_enqueues_nothing(queue, tmp_path):
    env, workers = queue
    settings = settings_from_env(env)
    torch.manual_seed(7)
    torch.save(SeedMLP().state_dict(), tmp_path / "mlp-seed7.pt")
    manifest = tmp_path / "bulk.yaml"
    manifest.write_text(MANIFEST)
    workers.start("fbgemm", wait=False)
    workers.start("qnnpack", wait=False)
    workers.wait_ready("fbgemm")
    workers.wait_ready("qnnpack")

    submitted = _cli(env, "submit", str(manifest))
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip()
    assert "20 jobs, 20 enqueued, 0 reused" in submitted.stderr

    waited = _cli(env, "wait", "--batch", batch_id, "--timeout", "400", timeout=450)
    assert waited.returncode == 0, waited.stderr + waited.stdout
    progress = waited.stderr.splitlines()
    assert progress[-1].startswith("[########################] 20/20")
    # How many are rejected is each recipe's budget's verdict (built-ins carry a 1 % default): checked below.
    shown = {b: int(n) for b, n in re.findall(r"(fbgemm|qnnpack) 10/10: 10 done \((\d+) rejected\), 0 failed",
                                              progress[-1])}
    assert set(shown) == {"fbgemm", "qnnpack"}, progress[-1]
    assert len(progress) > 2  # the bar moved while the workers ran

    rows = _batch_rows(settings, batch_id)
    assert len(rows) == 20
    for r in rows:
        where = f"{r['model_name']} {r['recipe_name']} {r['backend']}: {r['error']}"
        assert r["status"] in ("succeeded", "rejected"), where
        assert all(r[c] is not None for c in RESULT_COLUMNS), where
        assert r["engine_used"] == r["backend"] and r["claim_token"].startswith(f"{r['backend']}-"), where
        assert [s["batch_size"] for s in r["measurements"]["latency_after"]] == [1, 64], where
        assert Path(r["artifact_uri"]).is_file() and r["attempts"] == 1 and not r["reused"], where
    own_weights = [r for r in rows if r["model_weights_uri"]]
    assert len(own_weights) == 8 and {r["status"] for r in own_weights} == {"rejected"}
    assert all("more than the budget allows" in r["error"] for r in own_weights)
    from modelpress.optimize.recipes import Recipe

    for r in rows:
        budget = Recipe.from_json(r["recipe_json"]).budget
        over = budget is not None and not budget.allows(before=r["metric_before"], after=r["metric_after"])
        assert r["status"] == ("rejected" if over else "succeeded"), (r["recipe_name"], r["metric_after"])
    assert shown == {b: sum(r["status"] == "rejected" for r in rows if r["backend"] == b) for b in shown}
    # The inline recipe has no budget; the built-in dynamic-int8 is judged by its default one.
    assert {r["status"] for r in rows if r["recipe_name"] == "prune30-dynamic-int8-per-tensor"
            and not r["model_weights_uri"]} == {"succeeded"}

    report = tmp_path / "report.html"
    made = _cli(env, "report", batch_id[:8], "--html", str(report))
    assert made.returncode == 0, made.stderr
    page = report.read_text()
    assert "Best artifact per model" in page and page.count('aria-label="artifact size against') == 3
    assert "http" not in page and "<script" not in page

    # Staged weights that change in the store after staging are caught by the worker's hash check, not loaded.
    from modelpress.cli import _rows

    producer = Producer(settings)
    tampered = tmp_path / "mlp-seed8.pt"
    torch.manual_seed(8)
    torch.save(SeedMLP().state_dict(), tampered)
    workers.stop("fbgemm")  # the job waits in its queue while its staged copy is damaged
    bad_id = producer.submit(model="mlp", recipe="dynamic-int8", backend="fbgemm", weights=str(tampered))
    (queued,) = _rows(settings, ids=[bad_id])
    staged = Path(queued["model_weights_uri"])
    staged.write_bytes(b"\0" * staged.stat().st_size)  # same size, other bytes
    workers.start("fbgemm")
    (bad,) = wait_for(settings, [bad_id], timeout=120, quiet=True)
    assert bad["status"] == "failed" and "is corrupt" in bad["error"] and bad["attempts"] == 1
    # Submitting the file again replaces the corrupt object (its hash is checked, not only its size).
    fixed_id = producer.submit(model="mlp", recipe="dynamic-int8", backend="fbgemm", weights=str(tampered))
    (fixed,) = wait_for(settings, [fixed_id], timeout=120, quiet=True)
    assert fixed["status"] in ("succeeded", "rejected") and fixed["model_weights_uri"] == str(staged), fixed["error"]
    assert ArtifactStore.from_settings(settings).read_bytes(str(staged)) == tampered.read_bytes()

    workers.stop_all()  # from here on, any message published would stay in Redis
    again = _cli(env, "submit", str(manifest))
    assert again.returncode == 0, again.stderr
    assert "20 jobs, 0 enqueued, 20 reused" in again.stderr
    assert _queued_messages(settings) == {"fbgemm": 0, "qnnpack": 0}
    reused = _batch_rows(settings, again.stdout.strip())
    first = {r["id"]: r for r in rows}
    assert len(reused) == 20 and all(r["reused"] for r in reused)
    for r in reused:
        src = first[r["reused_from_job_id"]]
        assert (r["status"], r["size_after_bytes"], r["metric_after"], r["artifact_uri"]) == (
            src["status"], src["size_after_bytes"], src["metric_after"], src["artifact_uri"])
    listed = {b["id"]: b for b in json.loads(_cli(env, "batches", "--format", "json").stdout)}
    assert (listed[again.stdout.strip()]["reused"], listed[batch_id]["reused"]) == (20, 0)

    # The check above can fail: a job that is not reused does leave its message in Redis.
    producer.submit(model="mlp", recipe="dynamic-int8", backend="fbgemm", reuse=False)
    producer.close()
    assert _queued_messages(settings) == {"fbgemm": 1, "qnnpack": 0}
    _drop_queues(settings)


def _drop_queues(settings) -> None:
    import redis

    r = redis.Redis.from_url(settings.broker_url)
    try:
        r.delete(*(f"{settings.queue_prefix}{b}" for b in ("fbgemm", "qnnpack")))
    finally:
        r.close()

"""Jobs are routed by target backend through real Redis to real worker processes."""

from __future__ import annotations

import os

from modelpress.api import Producer
from modelpress.cli import wait_for
from tests.conftest import settings_from_env


def test_each_job_runs_on_a_worker_of_its_target_backend_with_that_engine(queue):
    env, workers = queue
    workers.start("fbgemm")
    workers.start("qnnpack")
    settings = settings_from_env(env)
    producer = Producer(settings)
    # Interleaved, several of each: both workers are idle and ready, so only routing decides who runs what.
    ids = [producer.submit(model="mlp", recipe="dynamic-int8", backend=b)
           for b in ("qnnpack", "fbgemm", "qnnpack", "fbgemm")]
    producer.close()
    rows = wait_for(settings, ids, timeout=180, quiet=True)
    assert sorted(r["backend"] for r in rows) == ["fbgemm", "fbgemm", "qnnpack", "qnnpack"]
    for row in rows:
        # The MLP's all-int8 agreement (~0.97) breaks dynamic-int8's default 1 % budget: a result either way.
        assert row["status"] in ("succeeded", "rejected"), row["error"]
        # The engine the child actually had set, and the worker node that claimed the job, both match
        # the job's target backend: a qnnpack job never runs on the fbgemm worker.
        assert row["engine_used"] == row["backend"]
        assert row["claim_token"].startswith(f"{row['backend']}-")
        assert row["worker_arch"] and row["worker_host"]
        assert row["torch_version"].startswith("2.13.0")
        # Size is the bytes of the file the worker wrote, not a parameter count.
        assert row["size_after_bytes"] == os.path.getsize(row["artifact_uri"])
        assert 3.5 <= row["size_before_bytes"] / row["size_after_bytes"] <= 4.2
    assert "engine qnnpack" in workers.log("qnnpack") and "engine fbgemm" in workers.log("fbgemm")


def test_a_worker_consumes_only_its_own_queue(queue):
    env, workers = queue
    workers.start("fbgemm")
    settings = settings_from_env(env)
    producer = Producer(settings)
    qn = producer.submit(model="mlp", recipe="dynamic-int8", backend="qnnpack")
    fb = producer.submit(model="mlp", recipe="dynamic-int8", backend="fbgemm")
    producer.close()
    rows = {r["id"]: r for r in wait_for(settings, [fb], timeout=120, quiet=True)}
    assert rows[fb]["status"] in ("succeeded", "rejected"), rows[fb]["error"]
    from modelpress.cli import _rows

    (pending,) = _rows(settings, ids=[qn])
    # With no qnnpack worker up, the qnnpack job waits in its queue untouched.
    assert pending["status"] == "queued" and pending["attempts"] == 0
    workers.start("qnnpack")
    (done,) = wait_for(settings, [qn], timeout=120, quiet=True)
    assert done["status"] in ("succeeded", "rejected") and done["engine_used"] == "qnnpack"


def test_each_job_message_carries_model_recipe_and_backend_as_the_name_flower_and_worker_events_show(queue):
    import json

    import redis

    env, workers = queue
    settings = settings_from_env(env)
    producer = Producer(settings)
    job = producer.submit(model="mlp", recipe="dynamic-int8", backend="fbgemm")
    producer.close()
    client = redis.Redis.from_url(settings.effective_broker_url)
    try:
        (raw,) = client.lrange(f"{settings.queue_prefix}fbgemm", 0, -1)
    finally:
        client.close()
    message = json.loads(raw)
    assert message["headers"]["task"] == "modelpress.optimize"  # still routed and run by the task's own name
    assert message["headers"]["shadow"] == "mlp dynamic-int8 fbgemm"
    assert message["headers"]["argsrepr"] == repr([job])

    # A real worker reports the job under that name in its task-received event (what Flower's Tasks page lists).
    workers.start("fbgemm")
    (row,) = wait_for(settings, [job], timeout=120, quiet=True)
    assert row["status"] in ("succeeded", "rejected")
    assert f"Task mlp dynamic-int8 fbgemm[" in workers.log("fbgemm")

"""The optimize task through a real worker: failures are recorded with a reason and the queue goes on."""

from __future__ import annotations

import pytest
import torch

from modelpress.api import Producer
from modelpress.cli import wait_for
from modelpress.errors import ModelLoadError
from modelpress.zoo.models import SeedMLP
from tests.conftest import settings_from_env


def test_weights_that_do_not_load_are_refused_or_fail_the_job_with_the_reason_and_the_next_job_still_runs(queue, tmp_path):
    env, workers = queue
    workers.start("fbgemm")
    settings = settings_from_env(env)
    corrupt = tmp_path / "corrupt.pt"
    good = tmp_path / "good.pt"
    torch.save(SeedMLP().state_dict(), good)
    corrupt.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])  # truncated zip
    wrong = tmp_path / "wrong_shape.safetensors"
    from safetensors.torch import save_file

    save_file({"fc1.weight": torch.zeros(3, 3)}, str(wrong))

    producer = Producer(settings)
    # A truncated file is caught at submit, before any row exists ...
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        producer.submit(model="mlp", recipe="dynamic-int8", backend="fbgemm", weights=str(corrupt))
    # ... weights that parse but do not fit the architecture can only be found by the worker.
    wrong_id = producer.submit(model="mlp", recipe="dynamic-int8", backend="fbgemm", weights=str(wrong))
    good_id = producer.submit(model="mlp", recipe="dynamic-int8", backend="fbgemm", weights=str(good))
    producer.close()
    rows = {r["id"]: r for r in wait_for(settings, [wrong_id, good_id], timeout=180, quiet=True)}

    assert rows[wrong_id]["status"] == "failed"
    assert "do not fit the architecture" in rows[wrong_id]["error"]
    assert rows[wrong_id]["attempts"] == 1  # a user error is not retried
    assert rows[good_id]["status"] in ("succeeded", "rejected") and rows[good_id]["artifact_uri"], rows[good_id]["error"]
    from modelpress.api import weights_content_id

    # The reuse key covers the weights and the factory that loads them (issue 10 item 6).
    staged_sha = rows[good_id]["model_weights_uri"].rsplit("/", 1)[-1].split(".")[0]
    assert rows[good_id]["model_sha256"] == weights_content_id("mlp", staged_sha)


def test_a_forced_job_is_measured_anew_by_the_worker_and_its_row_says_not_reused(queue):
    env, workers = queue
    workers.start("fbgemm")
    settings = settings_from_env(env)
    producer = Producer(settings)
    first = producer.submit(model="mlp", recipe="dynamic-int8", backend="fbgemm")
    [a] = wait_for(settings, [first], timeout=180, quiet=True)
    # Without --force and without producer-side reuse, the worker answers from its result cache ...
    cached = producer.submit(model="mlp", recipe="dynamic-int8", backend="fbgemm", reuse=False)
    [c] = wait_for(settings, [cached], timeout=180, quiet=True)
    # ... with --force it must measure again, and say so.
    forced = producer.submit(model="mlp", recipe="dynamic-int8", backend="fbgemm", force=True)
    [f] = wait_for(settings, [forced], timeout=180, quiet=True)
    producer.close()

    assert a["status"] in ("succeeded", "rejected") and not a["reused"], a["error"]
    assert c["reused"] and not c["force"]
    assert f["force"] and f["reused"] is False and f["reused_from_job_id"] is None
    assert f["status"] == a["status"]
    first_timing = a["measurements"]["extra"]["timing"]["phases"]
    forced_timing = f["measurements"]["extra"]["timing"]["phases"]
    assert forced_timing[0]["start"] > first_timing[-1]["end"]  # timed in its own run, not copied

"""A distillation whose worker child is killed with SIGKILL mid-way resumes from its checkpoint: it is not run
twice from the start (issue 22 item 3). Real worker processes, Redis, PostgreSQL; a team's own ``hf:`` folder
with a train file, submitted as a user submits it.
"""

from __future__ import annotations

import os
import signal
import time

from modelpress.api import Producer
from modelpress.models_db import FINISHED, get_job, make_engine, make_sessionmaker
from modelpress.optimize.recipes import Recipe
from tests.conftest import settings_from_env
from tests.optimize.techniques.tiny_encoders import build_encoder_folder
from tests.own_models_fixtures import topic_rows, write_jsonl

STEPS = 3000


def _row(engine, job_id: str) -> dict:  # type: ignore[no-untyped-def]
    with make_sessionmaker(engine)() as s:
        return get_job(session=s, job_id=job_id).to_dict()


def test_a_distillation_killed_mid_way_resumes_from_its_last_checkpoint_and_finishes_once(queue, tmp_path):
    env, workers = queue
    folder = build_encoder_folder(tmp_path)
    ev = write_jsonl(tmp_path / "eval.jsonl", [{"text": r["text"]} for r in topic_rows(60, seed=1)])
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": r["text"]} for r in topic_rows(200, seed=3)])
    workers.start("fbgemm")
    settings = settings_from_env(env)
    recipe = Recipe.from_dict({"name": "prune-distill", "steps": [
        {"type": "prune", "level": 0.5},
        {"type": "distill_float", "max_steps": STEPS, "validate_every": 50, "max_seconds": 600}]})
    producer = Producer(settings)
    job_id = producer.submit(model=f"hf:{folder}", recipe=recipe, backend="fbgemm",
                             data={"eval": str(ev), "train": str(train)}, max_length=16)
    producer.close()

    engine = make_engine(settings.effective_database_url)
    try:
        deadline = time.monotonic() + 300
        while True:  # until the row shows a reported (so checkpointed) step well into the run
            row = _row(engine, job_id)
            if row["status"] == "running" and (row["progress"] or {}).get("iteration", 0) >= 200:
                break
            assert row["status"] not in FINISHED, (row["status"], row["error"])
            assert time.monotonic() < deadline, workers.log("fbgemm")[-3000:]
            time.sleep(0.2)
        killed_after = row["progress"]["iteration"]
        os.kill(int(row["claim_token"].split("/")[1]), signal.SIGKILL)  # "<node>/<child pid>/<nonce>"
        deadline = time.monotonic() + 600
        while (row := _row(engine, job_id))["status"] not in FINISHED:
            assert time.monotonic() < deadline, workers.log("fbgemm")[-3000:]
            time.sleep(0.5)
    finally:
        engine.dispose()

    assert row["status"] in ("succeeded", "rejected"), row["error"]
    assert row["attempts"] == 2  # the killed run, then the one that finished
    distill = row["measurements"]["steps_meta"][1]
    # The second run started where the first one's last checkpoint was (at or after what the row showed),
    # and trained only the rest: the same number of steps in all, not the whole run again.
    assert distill["resumed_from_step"] is not None and distill["resumed_from_step"] >= killed_after
    assert distill["steps_run"] == STEPS and distill["stopped_by"] == "max_steps"
    assert [h["step"] for h in distill["history"]] == list(range(50, STEPS + 1, 50))

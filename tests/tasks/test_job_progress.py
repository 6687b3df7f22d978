"""A long step's progress through a real worker, Redis and PostgreSQL: on the row while it runs, in Flower's
events, and its checkpoint folder gone once the result is written (issue 22 item 3).

The worker's children import the test-only step ``test_report_progress`` (tests/progress_step.py) at start
through tests/import_hook (``MP_TEST_IMPORTS``): a job parses its recipe before anything else, so the step
type must be known then.
"""

from __future__ import annotations

import json
import os
import threading
import time

from celery.events.state import State

from modelpress.api import Producer
from modelpress.models_db import FINISHED, get_job, make_engine, make_sessionmaker
from modelpress.optimize.recipes import Recipe
from modelpress.worker_store import worker_dir
from modelpress.workers.app import make_app
from tests.conftest import ROOT, settings_from_env
from tests.progress_step import STEP_TYPE, checkpoint_root

HOOK = ROOT / "tests" / "import_hook"


def _listen(app, events: list[dict], state: State) -> tuple[threading.Thread, object]:
    """Capture every event on the broker into ``events`` and into ``state``, Celery's task state machine that
    Flower's own state extends: what ``state`` says of a task is what Flower shows."""
    conn = app.connection_for_read()

    def on_event(event: dict) -> None:
        events.append(event)
        state.event(event)

    recv = app.events.Receiver(conn, handlers={"*": on_event})
    thread = threading.Thread(target=recv.capture, kwargs={"wakeup": False}, daemon=True)
    thread.start()
    # Redis pub/sub keeps nothing for late subscribers: probe until the receiver hears us.
    with app.connection_for_write() as out, app.events.Dispatcher(out) as probe:
        deadline = time.monotonic() + 30
        while not any(e["type"] == "modelpress-probe" for e in events) and time.monotonic() < deadline:
            probe.send("modelpress-probe")
            time.sleep(0.1)
    return thread, recv


def test_a_steps_progress_is_on_the_running_jobs_row_and_in_its_task_events_and_its_checkpoints_go_at_the_end(
        queue, tmp_path):
    env, workers = queue
    ledger = tmp_path / "progress-runs.jsonl"
    workers.start("fbgemm", extra_env={
        "PYTHONPATH": os.pathsep.join([str(HOOK), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "MP_TEST_IMPORTS": "tests.progress_step", "MP_TEST_PROGRESS_LEDGER": str(ledger)})
    settings = settings_from_env(env)
    app = make_app(settings)
    events: list[dict] = []
    state = State()
    thread, recv = _listen(app, events, state)

    # 16 iterations 0.5 s apart: ~8 s of "training", several 2 s progress writes.
    recipe = Recipe.from_dict({"name": "progress", "steps": [{"type": STEP_TYPE, "iterations": 16, "interval_s": 0.5}]})
    producer = Producer(settings)
    job_id = producer.submit(model="mlp", recipe=recipe, backend="fbgemm")
    producer.close()

    engine = make_engine(settings.effective_database_url)
    seen_running: list[dict] = []
    states_while_reporting: set[str] = set()
    deadline = time.monotonic() + 300
    try:
        while True:
            with make_sessionmaker(engine)() as s:
                row = get_job(session=s, job_id=job_id).to_dict()
            if row["status"] == "running" and row["progress"] is not None:
                seen_running.append(row["progress"])
                task = state.tasks.get(row["celery_task_id"])
                if task is not None:
                    states_while_reporting.add(task.state)
            if row["status"] in FINISHED:
                break
            assert time.monotonic() < deadline, workers.log("fbgemm")[-3000:]
            time.sleep(0.2)
        # The task-succeeded event may trail the row by a moment.
        deadline = time.monotonic() + 10
        while state.tasks.get(row["celery_task_id"]) is None or state.tasks[row["celery_task_id"]].state != "SUCCESS":
            assert time.monotonic() < deadline, [e["type"] for e in events]
            time.sleep(0.1)
    finally:
        engine.dispose()
        recv.should_stop = True
        thread.join(10)

    assert row["status"] in ("succeeded", "rejected"), row["error"]
    # While it ran, the row said how far the step was, and moved on.
    iterations = [p["iteration"] for p in seen_running]
    assert len(set(iterations)) >= 2 and iterations == sorted(iterations), seen_running
    assert seen_running[0]["step"] == STEP_TYPE and seen_running[0]["of"] == 16
    assert row["progress"]["iteration"] == 16  # the last report is written before the result

    # Flower: the same reports as task-progress events of this task; the task reads PROGRESS while they come.
    reports = [e for e in events if e["type"] == "task-progress"]
    assert reports and {e["uuid"] for e in reports} == {row["celery_task_id"]}
    assert reports[-1]["iteration"] == 16 and reports[-1]["loss"] == 1 / 16
    assert "PROGRESS" in states_while_reporting, states_while_reporting
    assert state.tasks[row["celery_task_id"]].state == "SUCCESS"

    # The step trained in a private folder named by the job's key, removed once the result was written.
    (run,) = [json.loads(line) for line in ledger.read_text().splitlines()]
    folder = checkpoint_root(worker_dir(settings)) / row["measurements"]["artifact_key"]
    assert run["checkpoint_dir"] == str(folder) and run["mode"] == "0o750"
    assert not folder.exists()

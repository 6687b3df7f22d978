"""Hosts disagree about the time: every comparison between hosts uses the database's clock.

A reconciler process whose Python clock runs 15 minutes ahead (a faketime-style hook,
``tests/faults/skewed_clock``) looks at a live job, a dead one and a fresh queued one, on SQLite and
PostgreSQL. Judged by its own clock it would requeue the live job and re-publish the fresh one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from sqlalchemy import update

from modelpress.models_db import claim_job, create_job, get_job, heartbeat, make_engine, make_sessionmaker, migrate
from modelpress.models_db.clock import db_now_plus
from modelpress.models_db.schema import Job
from tests.conftest import ROOT, queue_env
from tests.faults.conftest import delete_keys
from tests.faults.record import record

HOOK = Path(__file__).resolve().parent / "skewed_clock"
SKEW_S = 900


def _python_now_in(env: dict[str, str]) -> float:
    code = "import time, datetime; print(time.time(), datetime.datetime.now(datetime.timezone.utc).timestamp())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    a, b = (float(x) for x in out.stdout.split())
    return min(a, b)


def test_a_reconciler_whose_clock_runs_ahead_requeues_only_the_dead_job_and_republishes_nothing_fresh(
        db_url, redis_url, tmp_path):
    import time

    migrate.upgrade(db_url)
    prefix = f"mpskew-{uuid.uuid4().hex[:8]}:"
    env = queue_env(tmp_path, broker=redis_url, database=db_url, prefix=prefix)
    env.update({"MODELPRESS_HEARTBEAT_STALE_AFTER": "60", "MODELPRESS_RECONCILE_QUEUED_GRACE": "600",
                "PYTHONPATH": os.pathsep.join([str(HOOK), str(ROOT)]), "MP_TEST_CLOCK_SKEW_S": str(SKEW_S)})
    # The hook works: the reconciler's Python clock is a quarter of an hour ahead of ours.
    assert _python_now_in(env) - time.time() > SKEW_S - 30

    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    try:
        with sessions() as s:
            live, dead, fresh = (create_job(session=s, model_name="mlp", recipe_name="r", recipe_json="{}",
                                            recipe_sha256="0" * 64, backend="fbgemm").id for _ in range(3))
            assert claim_job(session=s, job_id=live, host="h", arch="x", task_id="t", token="alive/1/a")
            assert claim_job(session=s, job_id=dead, host="h", arch="x", task_id="t", token="dead/2/b")
            assert heartbeat(session=s, job_id=live, token="alive/1/a")
            # The dead worker's last beat, two minutes ago by the database's clock.
            s.execute(update(Job).where(Job.id == dead).values(heartbeat_at=db_now_plus(-120)))
            s.commit()

        out = subprocess.run([sys.executable, "-m", "modelpress", "reconcile", "--json"], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout)
        with sessions() as s:
            rows = {j: get_job(session=s, job_id=j) for j in (live, dead, fresh)}
        dialect = "PostgreSQL" if db_url.startswith("postgresql") else "SQLite"
        record("fault", fault=f"reconciler clock 15 min ahead, {dialect}: a live, a dead and a fresh queued row "
                              "(no worker; the rows stay unfinished)", injected=1,
               jobs=3, lost=0, duplicates=len(summary["republished"]) + len(set(summary["requeued_stale"]) - {dead}),
               statuses={"running": sum(r.status == "running" for r in rows.values()),
                         "queued": sum(r.status == "queued" for r in rows.values())})
        assert summary["requeued_stale"] == [dead]
        assert summary["republished"] == []
        assert (rows[live].status, rows[live].claim_token) == ("running", "alive/1/a")
        assert rows[dead].status == "queued"
        assert rows[fresh].status == "queued"
    finally:
        engine.dispose()
        delete_keys(redis_url, prefix)

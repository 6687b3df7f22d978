"""Beat: the schedule comes from settings, and only the holder of the lease schedules anything."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
import redis
from sqlalchemy import update

from modelpress.models_db import Batch, Job, make_engine, make_sessionmaker, migrate
from modelpress.models_db.jobs import acquire_lease, lease_holder, release_lease
from modelpress.models_db.clock import db_now_plus
from modelpress.models_db.schema import Lock
from modelpress.settings import Settings
from modelpress.workers.beat import beat_schedule, parse_schedule, schedule_filename
from tests.conftest import REDIS_URL, settings_from_env
from tests.workers.processes import Processes

SENT = "Sending due task nightly-recompression"
LEADER = "took the scheduler lease"


@pytest.fixture
def procs(queue, tmp_path):
    env, _ = queue
    p = Processes(env, tmp_path)
    yield p
    p.stop_all()


def test_two_beats_started_together_enqueue_one_nights_jobs_once_and_a_standby_takes_over(queue, procs):
    env, _ = queue
    env.update({
        "MODELPRESS_NIGHTLY_SCHEDULE": "2",  # every 2 s: the night is re-triggered many times
        "MODELPRESS_NIGHTLY_MODELS": "mlp",
        "MODELPRESS_NIGHTLY_RECIPES": "dynamic-int8,prune50-dynamic-int8",
        "MODELPRESS_BEAT_LEASE_SECONDS": "15",
        # Only nightly runs should show in the ops worker's log here: the reconciler's entry waits an hour.
        "MODELPRESS_RECONCILE_INTERVAL": "3600",
    })
    # No optimize worker runs: every published job message stays in Redis, where it can be counted.
    procs.start("ops", "ops-worker")
    procs.start("beat-a", "beat")
    procs.start("beat-b", "beat")
    procs.wait_for("one beat to take the lease", lambda: any(LEADER in procs.log(b) for b in ("beat-a", "beat-b")))
    leader, standby = ("beat-a", "beat-b") if LEADER in procs.log("beat-a") else ("beat-b", "beat-a")
    procs.wait_log(standby, "is a standby")
    # Three nightly runs processed: the night was triggered again and again by the leader.
    procs.wait_log("ops", "succeeded in", count=3, timeout=180)

    settings = settings_from_env(env)
    eng = make_engine(settings.effective_database_url)
    sessions = make_sessionmaker(eng)
    r = redis.Redis.from_url(REDIS_URL)
    prefix = env["MODELPRESS_QUEUE_PREFIX"]

    def check_one_night() -> list[Job]:
        with sessions() as s:
            jobs = s.query(Job).all()
            batches = [(b.id, b.kind) for b in s.query(Batch).all()]
        nights = {j.night for j in jobs}
        assert len(nights) == 1 and len(batches) == 1 and batches[0] == (f"nightly-{nights.pop()}", "nightly")
        assert sorted((j.model_name, j.recipe_name, j.backend) for j in jobs) == [
            ("mlp", "dynamic-int8", "fbgemm"), ("mlp", "dynamic-int8", "qnnpack"),
            ("mlp", "prune50-dynamic-int8", "fbgemm"), ("mlp", "prune50-dynamic-int8", "qnnpack")]
        # Exactly one message per job was published, however many times the night was triggered.
        assert r.llen(f"{prefix}fbgemm") == 2 and r.llen(f"{prefix}qnnpack") == 2
        return jobs

    try:
        jobs = check_one_night()
        assert SENT not in procs.log(standby)
        with sessions() as s:
            holder = lease_holder(session=s, name="beat")
        assert holder is not None and f"{holder} {LEADER}" in procs.log(leader)

        # The leader stops (and releases the lease): the standby takes over and keeps scheduling,
        # and the night still has its four jobs and four messages.
        assert procs.stop(leader) == 0
        assert "released the scheduler lease" in procs.log(leader)
        procs.wait_log(standby, LEADER, timeout=60)
        done = procs.log("ops").count("succeeded in")
        procs.wait_log(standby, SENT, count=2, timeout=60)
        procs.wait_log("ops", "succeeded in", count=done + 2, timeout=60)
        assert sorted(j.id for j in check_one_night()) == sorted(j.id for j in jobs)
        assert schedule_filename(settings).parent == settings.home
    finally:
        r.close()
        eng.dispose()


def test_a_lease_has_one_holder_until_it_is_released_or_expires(db_url):
    migrate.upgrade(db_url)
    eng = make_engine(db_url)
    sessions = make_sessionmaker(eng)
    try:
        with sessions() as s:
            assert acquire_lease(session=s, name="beat", holder="a", ttl_s=60)
            assert not acquire_lease(session=s, name="beat", holder="b", ttl_s=60)
            assert acquire_lease(session=s, name="beat", holder="a", ttl_s=60)  # renewal
            assert lease_holder(session=s, name="beat") == "a"
            assert not release_lease(session=s, name="beat", holder="b")  # only the holder can
            # a stopped renewing: once its lease has expired (database clock), b takes it and a cannot renew it.
            s.execute(update(Lock).where(Lock.name == "beat").values(expires_at=db_now_plus(-1)))
            s.commit()
            assert acquire_lease(session=s, name="beat", holder="b", ttl_s=60)
            assert not acquire_lease(session=s, name="beat", holder="a", ttl_s=60)
            assert release_lease(session=s, name="beat", holder="b")
            assert lease_holder(session=s, name="beat") is None
            assert acquire_lease(session=s, name="beat", holder="a", ttl_s=60)
            # Another lease name is independent.
            assert acquire_lease(session=s, name="other", holder="b", ttl_s=60)
    finally:
        eng.dispose()


def test_the_schedule_has_the_nightly_crontab_in_utc_and_the_reconciler_by_name(tmp_path):
    from modelpress.workers.app import make_app

    settings = Settings(home=tmp_path, nightly_schedule="30 3 * * 1-5", reconcile_interval=120)
    entries = beat_schedule(settings)
    nightly = entries["nightly-recompression"]
    assert nightly["task"] == "modelpress.nightly"
    assert nightly["schedule"].hour == {3} and nightly["schedule"].minute == {30}
    assert nightly["schedule"].day_of_week == {1, 2, 3, 4, 5}
    assert entries["reconcile"]["task"] == "modelpress.reconcile"
    assert entries["reconcile"]["schedule"] == timedelta(seconds=120)

    app = make_app(settings)
    assert app.conf.timezone == "UTC" and app.conf.enable_utc
    assert app.amqp.router.route({}, "modelpress.nightly")["queue"].name == "ops"
    assert sorted(app.conf.beat_schedule) == ["nightly-recompression", "reconcile"]

    assert "nightly-recompression" not in beat_schedule(Settings(home=tmp_path, nightly_schedule=""))
    assert parse_schedule("2.5") == timedelta(seconds=2.5)
    with pytest.raises(ValueError, match="crontab"):
        Settings(home=tmp_path, nightly_schedule="every night")


def test_beat_refuses_to_start_when_the_nightly_plan_names_an_unknown_model(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "MODELPRESS_HOME": str(tmp_path), "MODELPRESS_NIGHTLY_MODELS": "mlp,no_such_model"}
    out = subprocess.run([sys.executable, "-m", "modelpress", "beat"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert "nightly plan is invalid" in out.stderr and "no_such_model" in out.stderr
    assert not schedule_filename(Settings(home=tmp_path)).exists()

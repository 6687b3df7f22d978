"""Job state changes are atomic and legal on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from modelpress.models_db import (
    claim_job,
    create_job,
    fail_job,
    finish_job,
    get_job,
    heartbeat,
    make_engine,
    make_sessionmaker,
    migrate,
    requeue_job,
)
from sqlalchemy import update

from modelpress.models_db.clock import db_now_plus
from modelpress.models_db.jobs import (
    acquire_lease,
    fail_exhausted_job,
    lease_holder,
    mark_republished,
    queued_jobs_published_before,
    requeue_stale_job,
    stale_running_jobs,
)
from modelpress.models_db.schema import Job


def _job(sessions):
    with sessions() as s:
        return create_job(session=s, model_name="mlp", recipe_name="dynamic-int8", recipe_json="{}",
                          recipe_sha256="0" * 64, backend="fbgemm").id


def test_only_one_of_two_claimers_wins_a_queued_job(sessions):
    job_id = _job(sessions)
    with sessions() as a, sessions() as b:
        wins = [claim_job(session=x, job_id=job_id, host="h", arch="x", task_id="t", stale_after_s=None, token=tok)
                for x, tok in ((a, "A"), (b, "B"))]
    assert wins == [True, False]
    with sessions() as s:
        job = get_job(session=s, job_id=job_id)
        assert (job.status, job.attempts, job.claim_token) == ("running", 1, "A")


def test_only_the_claim_holder_can_finish_a_job_and_a_finished_job_cannot_fail(sessions):
    job_id = _job(sessions)
    with sessions() as s:
        claim_job(session=s, job_id=job_id, host="h", arch="x", task_id="t", stale_after_s=None, token="A")
        assert not finish_job(session=s, job_id=job_id, status="succeeded", values={}, token="B")
        assert finish_job(session=s, job_id=job_id, status="succeeded", values={"size_after_bytes": 5}, token="A")
        assert not fail_job(session=s, job_id=job_id, error="late")
        job = get_job(session=s, job_id=job_id)
        assert (job.status, job.size_after_bytes, job.error) == ("succeeded", 5, None)


def test_a_running_job_is_taken_over_only_when_its_heartbeat_is_stale(sessions):
    job_id = _job(sessions)
    with sessions() as s:
        claim_job(session=s, job_id=job_id, host="h", arch="x", task_id="t", stale_after_s=None, token="A")
        assert heartbeat(session=s, job_id=job_id, token="A")
        assert not claim_job(session=s, job_id=job_id, host="h2", arch="x", task_id="t", stale_after_s=60, token="B")
        # A cutoff one second in the future (by the database's clock): any heartbeat is stale.
        assert claim_job(session=s, job_id=job_id, host="h2", arch="x", task_id="t", stale_after_s=-1, token="B")
        assert not heartbeat(session=s, job_id=job_id, token="A")  # the old holder lost it
        assert get_job(session=s, job_id=job_id).attempts == 2


def test_requeue_returns_a_running_job_to_queued_and_max_attempts_stops_claims(sessions):
    job_id = _job(sessions)
    with sessions() as s:
        for token in ("A", "B"):
            assert claim_job(session=s, job_id=job_id, host="h", arch="x", task_id="t", stale_after_s=None,
                             max_attempts=2, token=token)
            assert requeue_job(session=s, job_id=job_id, error="transient", token=token)
        assert not claim_job(session=s, job_id=job_id, host="h", arch="x", task_id="t", stale_after_s=None,
                             max_attempts=2, token="C")
        assert get_job(session=s, job_id=job_id).status == "queued"


def test_a_job_is_found_by_a_unique_prefix_of_its_id(sessions):
    job_id = _job(sessions)
    with sessions() as s:
        assert get_job(session=s, job_id=job_id[:8]).id == job_id
        assert get_job(session=s, job_id=job_id[:3]) is None  # too short to be safe


def test_a_token_fails_only_the_running_claim_it_holds_never_the_job_once_it_was_requeued(sessions):
    job_id = _job(sessions)
    with sessions() as s:
        claim_job(session=s, job_id=job_id, host="h", arch="x", task_id="t", token="A")
        # The reconciler took it back (A's heartbeats went stale): A's late failure must not land.
        assert requeue_job(session=s, job_id=job_id, error="requeued by the reconciler")
        assert not fail_job(session=s, job_id=job_id, error="abandoned run", token="A")
        assert get_job(session=s, job_id=job_id).status == "queued"
        # Claimed again by B: A still touches nothing, B's token does.
        claim_job(session=s, job_id=job_id, host="h", arch="x", task_id="t", token="B")
        assert not fail_job(session=s, job_id=job_id, error="abandoned run", token="A")
        assert fail_job(session=s, job_id=job_id, error="bad weights", token="B")
        job = get_job(session=s, job_id=job_id)
        assert (job.status, job.error) == ("failed", "bad weights")


def _set(sessions, job_id, **values):
    with sessions() as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))
        s.commit()


def test_staleness_grace_and_poison_are_judged_by_the_database_clock_in_seconds(sessions):
    live, dead, old_queued, new_queued = (_job(sessions) for _ in range(4))
    with sessions() as s:
        for job_id, token in ((live, "L"), (dead, "D")):
            assert claim_job(session=s, job_id=job_id, host="h", arch="x", task_id="t", token=token)
        assert heartbeat(session=s, job_id=live, token="L")
    # Written by the database's clock, as the worker's heartbeat and the producer's stamp are.
    _set(sessions, dead, heartbeat_at=db_now_plus(-120))
    _set(sessions, old_queued, heartbeat_at=db_now_plus(-700))
    _set(sessions, new_queued, heartbeat_at=db_now_plus(-5))
    with sessions() as s:
        assert [j.id for j in stale_running_jobs(session=s, stale_after_s=60)] == [dead]
        assert [j.id for j in queued_jobs_published_before(session=s, grace_s=600)] == [old_queued]
        assert not requeue_stale_job(session=s, job_id=live, stale_after_s=60, error="x")
        assert requeue_stale_job(session=s, job_id=dead, stale_after_s=60, error="worker lost")
        # Requeued and stamped "published now": not a lost message until the grace period passes.
        assert not mark_republished(session=s, job_id=dead, grace_s=1)
        assert mark_republished(session=s, job_id=old_queued, grace_s=600)
        assert not fail_exhausted_job(session=s, job_id=live, max_attempts=1, stale_after_s=60, error="x")
        assert get_job(session=s, job_id=live).status == "running"
        with pytest.raises(TypeError, match="database"):
            claim_job(session=s, job_id=new_queued, host="h", arch="x", task_id="t",
                      stale_before=object())  # type: ignore[arg-type]


def test_a_lease_expires_by_the_database_clock(sessions):
    import time

    with sessions() as s:
        assert acquire_lease(session=s, name="beat", holder="a", ttl_s=1.0)
        assert not acquire_lease(session=s, name="beat", holder="b", ttl_s=1.0)
        time.sleep(1.3)
        assert lease_holder(session=s, name="beat") is None
        assert acquire_lease(session=s, name="beat", holder="b", ttl_s=60)
        assert lease_holder(session=s, name="beat") == "b"

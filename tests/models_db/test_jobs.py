"""Job state changes are atomic and legal on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

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
from modelpress.models_db.schema import utcnow


@pytest.fixture
def sessions(db_url):
    migrate.upgrade(db_url)
    eng = make_engine(db_url)
    yield make_sessionmaker(eng)
    eng.dispose()


def _job(sessions):
    with sessions() as s:
        return create_job(session=s, model_name="mlp", recipe_name="dynamic-int8", recipe_json="{}",
                          recipe_sha256="0" * 64, backend="fbgemm").id


def test_only_one_of_two_claimers_wins_a_queued_job(sessions):
    job_id = _job(sessions)
    with sessions() as a, sessions() as b:
        wins = [claim_job(session=x, job_id=job_id, host="h", arch="x", task_id="t", stale_before=None, token=tok)
                for x, tok in ((a, "A"), (b, "B"))]
    assert wins == [True, False]
    with sessions() as s:
        job = get_job(session=s, job_id=job_id)
        assert (job.status, job.attempts, job.claim_token) == ("running", 1, "A")


def test_only_the_claim_holder_can_finish_a_job_and_a_finished_job_cannot_fail(sessions):
    job_id = _job(sessions)
    with sessions() as s:
        claim_job(session=s, job_id=job_id, host="h", arch="x", task_id="t", stale_before=None, token="A")
        assert not finish_job(session=s, job_id=job_id, status="succeeded", values={}, token="B")
        assert finish_job(session=s, job_id=job_id, status="succeeded", values={"size_after_bytes": 5}, token="A")
        assert not fail_job(session=s, job_id=job_id, error="late")
        job = get_job(session=s, job_id=job_id)
        assert (job.status, job.size_after_bytes, job.error) == ("succeeded", 5, None)


def test_a_running_job_is_taken_over_only_when_its_heartbeat_is_stale(sessions):
    job_id = _job(sessions)
    with sessions() as s:
        claim_job(session=s, job_id=job_id, host="h", arch="x", task_id="t", stale_before=None, token="A")
        assert heartbeat(session=s, job_id=job_id, token="A")
        fresh_cutoff = utcnow() - timedelta(seconds=60)
        assert not claim_job(session=s, job_id=job_id, host="h2", arch="x", task_id="t", stale_before=fresh_cutoff, token="B")
        future_cutoff = utcnow() + timedelta(seconds=1)
        assert claim_job(session=s, job_id=job_id, host="h2", arch="x", task_id="t", stale_before=future_cutoff, token="B")
        assert not heartbeat(session=s, job_id=job_id, token="A")  # the old holder lost it
        assert get_job(session=s, job_id=job_id).attempts == 2


def test_requeue_returns_a_running_job_to_queued_and_max_attempts_stops_claims(sessions):
    job_id = _job(sessions)
    with sessions() as s:
        for token in ("A", "B"):
            assert claim_job(session=s, job_id=job_id, host="h", arch="x", task_id="t", stale_before=None,
                             max_attempts=2, token=token)
            assert requeue_job(session=s, job_id=job_id, error="transient", token=token)
        assert not claim_job(session=s, job_id=job_id, host="h", arch="x", task_id="t", stale_before=None,
                             max_attempts=2, token="C")
        assert get_job(session=s, job_id=job_id).status == "queued"


def test_a_job_is_found_by_a_unique_prefix_of_its_id(sessions):
    job_id = _job(sessions)
    with sessions() as s:
        assert get_job(session=s, job_id=job_id[:8]).id == job_id
        assert get_job(session=s, job_id=job_id[:3]) is None  # too short to be safe

"""The reconciler and the job states, without workers: real Redis (own key prefix) and a real database."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
import redis as redis_lib
from sqlalchemy import update

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
from modelpress.models_db.jobs import (
    fail_exhausted_job,
    fail_job_of_task,
    mark_republished,
    requeue_stale_job,
)
from modelpress.models_db.clock import db_now, db_now_plus
from modelpress.models_db.schema import Job
from modelpress.reconcile import broker_job_ids, reconcile_once


@pytest.fixture
def site(make_stack):
    """A deployment with no worker: messages stay in Redis where the test can count them."""
    stack = make_stack()
    engine = make_engine(stack.settings.effective_database_url)
    r = redis_lib.Redis.from_url(stack.settings.effective_broker_url)
    yield stack, make_sessionmaker(engine), lambda: r.llen(f"{stack.settings.queue_prefix}fbgemm")
    r.close()
    engine.dispose()


def _row(sessions, **values) -> str:
    with sessions() as s:
        job_id = create_job(session=s, model_name="mlp", recipe_name="r", recipe_json="{}", recipe_sha256="0" * 64,
                            backend="fbgemm").id
        if values:
            s.execute(update(Job).where(Job.id == job_id).values(**values))
            s.commit()
    return job_id


def _ago(seconds: float):  # type: ignore[no-untyped-def]
    # By the database's clock, as the code under test reads it.
    return db_now_plus(-seconds)


def test_a_queued_job_whose_message_was_lost_is_republished_and_not_again_while_its_message_waits(site):
    stack, sessions, queued = site
    job = _row(sessions, created_at=_ago(60))
    first = reconcile_once(stack.settings)
    assert first.republished == [job] and first.broker_checked
    assert reconcile_once(stack.settings).total == 0  # stamped just now
    # Grace period over again, but the message is waiting in Redis (a long backlog): nothing more is sent.
    second = reconcile_once(stack.settings.model_copy(update={"reconcile_queued_grace": 0.001}))
    assert second.republished == [] and second.still_in_broker == 1
    assert queued() == 1
    assert broker_job_ids(stack.settings) == {job}


def test_without_a_broker_look_up_the_stamp_alone_keeps_a_job_from_being_republished_before_the_grace_period(site):
    stack, sessions, queued = site
    job = _row(sessions, created_at=_ago(60))
    assert reconcile_once(stack.settings).republished == [job]
    redis_lib.Redis.from_url(stack.settings.effective_broker_url).delete(f"{stack.settings.queue_prefix}fbgemm")
    # Lost again at once (another Redis restart): the stamp says it was published a moment ago.
    assert reconcile_once(stack.settings).republished == []
    later = stack.settings.model_copy(update={"reconcile_queued_grace": 0.001})
    assert reconcile_once(later).republished == [job]
    assert queued() == 1


def test_a_job_queued_less_than_the_grace_period_ago_is_left_to_its_message(site):
    stack, sessions, queued = site
    _row(sessions)  # just created: its message may still be on its way
    assert reconcile_once(stack.settings).total == 0
    assert queued() == 0


def test_a_running_job_with_a_stale_heartbeat_is_requeued_and_republished_and_a_fresh_one_is_left_alone(site):
    stack, sessions, queued = site
    stale = _row(sessions, status="running", attempts=1, heartbeat_at=_ago(30), claim_token="dead/1/x")
    fresh = _row(sessions, status="running", attempts=1, heartbeat_at=db_now(), claim_token="alive/2/y")
    summary = reconcile_once(stack.settings)
    assert summary.requeued_stale == [stale]
    with sessions() as s:
        assert get_job(session=s, job_id=stale).status == "queued"
        assert get_job(session=s, job_id=fresh).status == "running"
        # The dead holder can no longer beat or finish it.
        assert not heartbeat(session=s, job_id=stale, token="dead/1/x")
        assert not finish_job(session=s, job_id=stale, status="succeeded", values={}, token="dead/1/x")
    assert queued() == 1


def test_jobs_that_used_up_their_attempts_are_failed_with_the_reason_and_not_republished(site):
    stack, sessions, queued = site
    crashed = _row(sessions, status="running", attempts=3, heartbeat_at=_ago(30), error="transient: boom")
    requeued = _row(sessions, status="queued", attempts=3, created_at=_ago(60))
    summary = reconcile_once(stack.settings)
    assert sorted(summary.failed_poison) == sorted([crashed, requeued])
    with sessions() as s:
        row = get_job(session=s, job_id=crashed)
        assert row.status == "failed"
        assert row.error.startswith("gave up after 3 attempts: the process running it was lost each time")
        assert "last error: transient: boom" in row.error
        assert get_job(session=s, job_id=requeued).status == "failed"
    assert queued() == 0


def test_two_reconcilers_at_once_publish_a_lost_job_once(site):
    stack, sessions, queued = site
    jobs = [_row(sessions, created_at=_ago(60)) for _ in range(20)]
    results = []
    threads = [threading.Thread(target=lambda: results.append(reconcile_once(stack.settings))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    published = [j for r in results for j in r.republished]
    assert sorted(published) == sorted(jobs)  # each once, whoever won it
    assert queued() == 20


def test_the_reconcile_command_prints_what_it_did_as_json(site):
    stack, sessions, _ = site
    job = _row(sessions, created_at=_ago(60))
    out = subprocess.run([sys.executable, "-m", "modelpress", "reconcile", "--json"], env=stack.env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["republished"] == [job]


FINISHED_STATES = ("succeeded", "failed", "rejected")


@pytest.fixture
def sessions(db_url):
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.mark.parametrize("status", FINISHED_STATES)
def test_a_finished_job_can_never_be_claimed_requeued_beaten_or_finished_again(sessions, status):
    job = _row(sessions, status=status, attempts=1, celery_task_id="t", claim_token="A", heartbeat_at=None,
               started_at=_ago(100), created_at=_ago(100))
    with sessions() as s:
        changes = {
            "claim": claim_job(session=s, job_id=job, host="h", arch="x", task_id="t", stale_after_s=-3600, token="B"),
            "heartbeat": heartbeat(session=s, job_id=job, token="A"),
            "finish": finish_job(session=s, job_id=job, status="succeeded", values={}, token="A"),
            "fail": fail_job(session=s, job_id=job, error="late"),
            "requeue": requeue_job(session=s, job_id=job, error=None),
            "requeue stale": requeue_stale_job(session=s, job_id=job, stale_after_s=-3600, error="x"),
            "republish": mark_republished(session=s, job_id=job, grace_s=-3600),
            "poison": fail_exhausted_job(session=s, job_id=job, max_attempts=1, stale_after_s=-3600, error="x"),
            "hard limit": fail_job_of_task(session=s, job_id=job, task_id="t", error="x"),
        }
        assert not any(changes.values()), changes
        assert get_job(session=s, job_id=job).status == status


def test_a_queued_job_can_only_be_claimed_failed_or_restamped(sessions):
    job = _row(sessions, created_at=_ago(100))
    with sessions() as s:
        assert not heartbeat(session=s, job_id=job, token="A")
        assert not finish_job(session=s, job_id=job, status="succeeded", values={}, token="A")
        assert not requeue_job(session=s, job_id=job, error=None)
        assert not requeue_stale_job(session=s, job_id=job, stale_after_s=-3600, error="x")
        assert not fail_job_of_task(session=s, job_id=job, task_id="t", error="x")
        assert not fail_exhausted_job(session=s, job_id=job, max_attempts=3, stale_after_s=-3600, error="x")
        assert mark_republished(session=s, job_id=job, grace_s=-3600)
        assert not mark_republished(session=s, job_id=job, grace_s=1)  # just stamped
        assert claim_job(session=s, job_id=job, host="h", arch="x", task_id="t", stale_after_s=None, token="A")
        assert get_job(session=s, job_id=job).attempts == 1


def test_a_reconcile_pass_imports_no_torch_so_it_can_run_in_a_worker_parent(site):
    stack, _, _ = site
    code = ("import sys; from modelpress.reconcile import reconcile_once; from modelpress.settings import Settings; "
            "reconcile_once(Settings()); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=stack.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"

"""A running job's progress: only the claim holder writes it, it reads back as written, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from modelpress.models_db import (
    claim_job,
    create_job,
    finish_job,
    get_job,
    make_engine,
    make_sessionmaker,
    migrate,
    record_progress,
    requeue_job,
)
from modelpress.models_db.schema import utcnow

REPORT = {"step": "distill_float", "iteration": 120, "of": 600, "loss": 0.031, "validation": 0.982,
          "elapsed_s": 41.2, "phase": {"name": "warmup", "done": True}}


def _running_job(sessions, token: str = "A") -> str:
    with sessions() as s:
        job_id = create_job(session=s, model_name="mlp", recipe_name="distill", recipe_json="{}",
                            recipe_sha256="0" * 64, backend="fbgemm").id
        assert claim_job(session=s, job_id=job_id, host="h", arch="x", task_id="t", stale_after_s=None, token=token)
    return job_id


def test_only_the_claim_holder_writes_progress_and_it_reads_back_as_written(sessions):
    job_id = _running_job(sessions, token="A")
    with sessions() as s:
        assert get_job(session=s, job_id=job_id).progress is None
        assert not record_progress(session=s, job_id=job_id, token="B", progress={"iteration": 1})
        assert record_progress(session=s, job_id=job_id, token="A", progress=REPORT)
    with sessions() as s:  # a fresh session: what the database holds, not what this one remembers
        assert get_job(session=s, job_id=job_id).progress == REPORT
        assert get_job(session=s, job_id=job_id).to_dict()["progress"] == REPORT


def test_a_run_that_lost_or_finished_its_job_writes_no_more_progress_a_new_claim_starts_empty_and_the_last_report_stays(sessions):
    job_id = _running_job(sessions, token="A")
    with sessions() as s:
        assert record_progress(session=s, job_id=job_id, token="A", progress={"iteration": 5})
        assert requeue_job(session=s, job_id=job_id, error="worker lost", token="A")
        assert not record_progress(session=s, job_id=job_id, token="A", progress={"iteration": 6})  # queued now
        assert claim_job(session=s, job_id=job_id, host="h2", arch="x", task_id="t2", stale_after_s=None, token="C")
        s.expire_all()
        assert get_job(session=s, job_id=job_id).progress is None  # the new attempt has reported nothing yet
        assert not record_progress(session=s, job_id=job_id, token="A", progress={"iteration": 7})  # C holds it
        assert record_progress(session=s, job_id=job_id, token="C", progress={"iteration": 8})
        assert finish_job(session=s, job_id=job_id, status="succeeded", values={}, token="C")
        assert not record_progress(session=s, job_id=job_id, token="C", progress={"iteration": 9})
    with sessions() as s:
        job = get_job(session=s, job_id=job_id)
        # Kept after the job ends: the last report says how far the run got.
        assert (job.status, job.progress) == ("succeeded", {"iteration": 8})


def test_migration_0008_adds_an_empty_progress_column_to_existing_rows_and_its_downgrade_removes_it(db_url):
    migrate.upgrade(db_url, "0007")
    eng = make_engine(db_url)
    try:
        with eng.begin() as c:
            c.execute(text("INSERT INTO jobs (id, model_name, recipe_name, recipe_json, recipe_sha256, backend, "
                           "status, attempts, reused, force, created_at) VALUES ('old', 'mlp', 'r', '{}', :sha, "
                           "'fbgemm', 'queued', 0, false, false, :now)"), {"sha": "0" * 64, "now": utcnow()})
        migrate.upgrade(db_url)
        assert "progress" in {c["name"] for c in inspect(eng).get_columns("jobs")}
        with make_sessionmaker(eng)() as s:
            assert get_job(session=s, job_id="old").progress is None
        migrate.downgrade(db_url, "0007")
        eng.dispose()  # SQLite's batch mode rebuilt the table: forget the cached reflection
        assert "progress" not in {c["name"] for c in inspect(eng).get_columns("jobs")}
        with eng.connect() as c:
            assert c.execute(text("SELECT model_name FROM jobs WHERE id = 'old'")).scalar_one() == "mlp"
    finally:
        eng.dispose()

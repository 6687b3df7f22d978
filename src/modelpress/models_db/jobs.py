"""Keyword-only data functions over the job table; each takes a ``Session`` and commits its own change.

State changes are single conditional UPDATEs so that two processes racing on one job cannot both
win: the WHERE clause names the state the change starts from, and rowcount says who won.

Legal transitions: queued → running → succeeded | failed | rejected; running → queued (transient
error, lost worker); queued → failed (poison/unrunnable).

Example:
    >>> from sqlalchemy.orm import Session
    >>> from modelpress.models_db import make_engine, create_all
    >>> eng = make_engine("sqlite://"); create_all(eng)
    >>> with Session(eng) as s:
    ...     job = create_job(session=s, model_name="mlp", recipe_name="r", recipe_json="{}",
    ...                      recipe_sha256="0" * 64, backend="fbgemm")
    ...     claim_job(session=s, job_id=job.id, host="h", arch="x86_64", task_id="t", stale_before=None)
    True
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Sequence

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from modelpress.models_db.schema import FINISHED, Batch, Job, JobStatus, utcnow


def create_batch(*, session: Session, name: str, source: str | None = None) -> Batch:
    batch = Batch(name=name, source=source)
    session.add(batch)
    session.commit()
    return batch


def create_job(*, session: Session, model_name: str, recipe_name: str, recipe_json: str, recipe_sha256: str,
               backend: str, model_weights_uri: str | None = None, model_sha256: str | None = None,
               batch_id: str | None = None, commit: bool = True) -> Job:
    """Insert a queued job. With ``commit=False`` the caller commits several at once."""
    job = Job(model_name=model_name, model_weights_uri=model_weights_uri, model_sha256=model_sha256,
              recipe_name=recipe_name, recipe_json=recipe_json, recipe_sha256=recipe_sha256, backend=backend,
              batch_id=batch_id, status=JobStatus.queued.value, attempts=0)
    session.add(job)
    if commit:
        session.commit()
    return job


def get_job(*, session: Session, job_id: str) -> Job | None:
    """A job by full id, or by a unique prefix of at least 6 characters (what the CLI prints)."""
    job = session.get(Job, job_id)
    if job is not None or len(job_id) < 6:
        return job
    rows = session.scalars(select(Job).where(Job.id.startswith(job_id, autoescape=True)).limit(2)).all()
    return rows[0] if len(rows) == 1 else None


def list_jobs(*, session: Session, status: str | None = None, batch_id: str | None = None,
              ids: Iterable[str] | None = None, limit: int | None = 200) -> Sequence[Job]:
    q = select(Job).order_by(Job.created_at, Job.id)
    if status:
        q = q.where(Job.status == status)
    if batch_id:
        q = q.where(Job.batch_id == batch_id)
    if ids is not None:
        q = q.where(Job.id.in_(list(ids)))
    if limit:
        q = q.limit(limit)
    return session.scalars(q).all()


def count_by_status(*, session: Session, ids: Iterable[str] | None = None, batch_id: str | None = None) -> dict[str, int]:
    q = select(Job.status, func.count()).group_by(Job.status)
    if ids is not None:
        q = q.where(Job.id.in_(list(ids)))
    if batch_id:
        q = q.where(Job.batch_id == batch_id)
    return {s: n for s, n in session.execute(q).all()}


def _update(session: Session, job_id: str, where: Any, values: dict[str, Any]) -> bool:
    res = session.execute(update(Job).where(Job.id == job_id, where).values(**values)
                          .execution_options(synchronize_session=False))
    session.commit()
    return res.rowcount == 1


def claim_job(*, session: Session, job_id: str, host: str, arch: str, task_id: str | None,
              stale_before: datetime | None, max_attempts: int | None = None, token: str | None = None) -> bool:
    """Atomically take a queued job (or a running one whose heartbeat is older than ``stale_before``).

    True for exactly one claimer; it increments ``attempts``.
    """
    claimable = Job.status == JobStatus.queued.value
    if stale_before is not None:
        claimable = or_(claimable, and_(Job.status == JobStatus.running.value, Job.heartbeat_at < stale_before))
    if max_attempts is not None:
        claimable = and_(claimable, Job.attempts < max_attempts)
    now = utcnow()
    return _update(session, job_id, claimable, {
        "status": JobStatus.running.value, "attempts": Job.attempts + 1, "started_at": now, "heartbeat_at": now,
        "worker_host": host, "worker_arch": arch, "celery_task_id": task_id, "error": None,
        "claim_token": token or host,
    })


def heartbeat(*, session: Session, job_id: str, token: str) -> bool:
    return _update(session, job_id, and_(Job.status == JobStatus.running.value, Job.claim_token == token),
                   {"heartbeat_at": utcnow()})


def finish_job(*, session: Session, job_id: str, status: str, values: dict[str, Any], token: str) -> bool:
    """running → succeeded/rejected with the measured values; False if this worker no longer owns it."""
    if status not in (JobStatus.succeeded.value, JobStatus.rejected.value):
        raise ValueError(f"finish_job: {status!r} is not a result status")
    return _update(session, job_id, and_(Job.status == JobStatus.running.value, Job.claim_token == token),
                   {**values, "status": status, "finished_at": utcnow(), "heartbeat_at": None})


def fail_job(*, session: Session, job_id: str, error: str, token: str | None = None,
             values: dict[str, Any] | None = None) -> bool:
    """queued/running → failed with a message a person can act on (never overwrites a result).

    With ``token``, a running job is failed only by the claimer holding that token.
    """
    where: Any = Job.status.in_([JobStatus.queued.value, JobStatus.running.value])
    if token is not None:
        where = or_(Job.status == JobStatus.queued.value, and_(Job.status == JobStatus.running.value, Job.claim_token == token))
    return _update(session, job_id, where,
                   {**(values or {}), "status": JobStatus.failed.value, "error": error[:4000],
                    "finished_at": utcnow(), "heartbeat_at": None})


def requeue_job(*, session: Session, job_id: str, error: str | None, token: str | None = None) -> bool:
    """running → queued (a transient error or a lost worker); the message is sent again by the caller."""
    where: Any = Job.status == JobStatus.running.value
    if token is not None:
        where = and_(where, Job.claim_token == token)
    return _update(session, job_id, where, {"status": JobStatus.queued.value, "error": error, "heartbeat_at": None})


def is_finished(status: str) -> bool:
    return status in FINISHED

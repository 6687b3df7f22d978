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
    ...     claim_job(session=s, job_id=job.id, host="h", arch="x86_64", task_id="t", stale_after_s=None)
    True

Times compared between hosts (heartbeats, staleness, grace periods, leases) are written and compared
with the database's clock (``models_db.clock``), never a host's ``utcnow()``: staleness is a number of
seconds, turned into a cutoff in SQL.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping, Sequence

from sqlalchemy import and_, delete, func, insert, null, or_, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelpress.models_db.clock import db_now, db_now_plus
from modelpress.models_db.schema import FINISHED, Batch, Job, JobStatus, Lock, utcnow


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
    return _by_id_or_prefix(session, Job, job_id)


def _by_id_or_prefix(session: Session, model: Any, ref: str) -> Any:
    # A prefix shorter than 6 characters could match another row tomorrow: only exact ids then.
    row = session.get(model, ref)
    if row is not None or len(ref) < 6:
        return row
    rows = session.scalars(select(model).where(model.id.startswith(ref, autoescape=True)).limit(2)).all()
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
              stale_after_s: float | None = None, max_attempts: int | None = None, token: str | None = None,
              stale_before: None = None) -> bool:
    """Atomically take a queued job (or a running one whose heartbeat is older than ``stale_after_s``
    seconds by the database's clock).

    True for exactly one claimer; it increments ``attempts``. ``stale_before`` is accepted only as
    ``None`` (older callers): an absolute cutoff would come from this host's clock.
    """
    if stale_before is not None:
        raise TypeError("claim_job: pass stale_after_s (seconds, compared with the database's clock), "
                        "not a datetime from this host's clock")
    claimable = Job.status == JobStatus.queued.value
    if stale_after_s is not None:
        claimable = or_(claimable, and_(Job.status == JobStatus.running.value, _stale(stale_after_s)))
    if max_attempts is not None:
        claimable = and_(claimable, Job.attempts < max_attempts)
    return _update(session, job_id, claimable, {
        "status": JobStatus.running.value, "attempts": Job.attempts + 1, "started_at": db_now(),
        "heartbeat_at": db_now(), "worker_host": host, "worker_arch": arch, "celery_task_id": task_id,
        # This attempt reports its own progress: a redelivered job does not show the last attempt's step.
        "error": None, "claim_token": token or host, "progress": None,
    })


def heartbeat(*, session: Session, job_id: str, token: str) -> bool:
    return _update(session, job_id, and_(Job.status == JobStatus.running.value, Job.claim_token == token),
                   {"heartbeat_at": db_now()})


def record_progress(*, session: Session, job_id: str, token: str, progress: Mapping[str, Any]) -> bool:
    """Store the latest progress of a running job; only the claim holder (``token``) can, like ``heartbeat``.

    False, and nothing written, when the job is no longer running under this claim (finished, requeued,
    taken over): a late report from a lost run never lands on another run's row. The caller throttles
    (the optimize task writes at most every ~2 s) and keeps the dict small and JSON-able.

    Example:
        >>> record_progress(session=s, job_id=j, token="host/42/ab12",
        ...                 progress={"step": "distill_float", "iteration": 120, "of": 600})  # doctest: +SKIP
        True
    """
    return _update(session, job_id, and_(Job.status == JobStatus.running.value, Job.claim_token == token),
                   {"progress": dict(progress)})


def finish_job(*, session: Session, job_id: str, status: str, values: dict[str, Any], token: str) -> bool:
    """running → succeeded/rejected with the measured values; False if this worker no longer owns it."""
    if status not in (JobStatus.succeeded.value, JobStatus.rejected.value):
        raise ValueError(f"finish_job: {status!r} is not a result status")
    return _update(session, job_id, and_(Job.status == JobStatus.running.value, Job.claim_token == token),
                   {**values, "status": status, "finished_at": db_now(), "heartbeat_at": None})


def fail_job(*, session: Session, job_id: str, error: str, token: str | None = None,
             values: dict[str, Any] | None = None) -> bool:
    """queued/running → failed with a message a person can act on (never overwrites a result).

    With ``token``, only the running claim holding that token can fail the job: a worker that lost
    its job (requeued, claimed by another) must not fail the row it no longer holds, whatever its
    status now. Without a token (submit-time checks, the reconciler) a queued or running row fails.

    Example:
        >>> fail_job(session=s, job_id=j, error="weights do not load", token="host/42/ab12")  # doctest: +SKIP
        True
    """
    where: Any = Job.status.in_([JobStatus.queued.value, JobStatus.running.value])
    if token is not None:
        where = and_(Job.status == JobStatus.running.value, Job.claim_token == token)
    return _update(session, job_id, where,
                   {**(values or {}), "status": JobStatus.failed.value, "error": error[:4000],
                    "finished_at": db_now(), "heartbeat_at": None})


def requeue_job(*, session: Session, job_id: str, error: str | None, token: str | None = None) -> bool:
    """running → queued (a transient error or a lost worker); the message is sent again by the caller."""
    where: Any = Job.status == JobStatus.running.value
    if token is not None:
        where = and_(where, Job.claim_token == token)
    return _update(session, job_id, where, {"status": JobStatus.queued.value, "error": error, "heartbeat_at": None})


def is_finished(status: str) -> bool:
    return status in FINISHED


# ------------------------------------------------------------------ batches and dedupe (bulk)
# The columns a finished job's result occupies: what a reused job copies from the job it reuses.
RESULT_COLUMNS: tuple[str, ...] = (
    "size_before_bytes", "size_after_bytes", "latency_batch_size", "latency_threads",
    "latency_before_median_ms", "latency_before_p90_ms", "latency_after_median_ms", "latency_after_p90_ms",
    "metric_name", "metric_before", "metric_after", "measurements", "artifact_uri",
    "worker_host", "worker_arch", "emulated", "engine_used", "torch_version", "modelpress_version", "error",
    "metric_eval_batch_size", "metric_after_b1", "metric_b1_rows", "timing_load_avg", "timing_lock_wait_s",
    "runtime", "runtime_versions", "builder_sha256",
)
REUSABLE_STATUSES: tuple[str, ...] = (JobStatus.succeeded.value, JobStatus.rejected.value)


def stage_batch(*, session: Session, name: str, kind: str = "manual", source: str | None = None) -> Batch:
    """Add a batch to the session *without* committing, so it lands in the same transaction as its jobs.

    Example:
        >>> with Session(eng) as s:  # doctest: +SKIP
        ...     b = stage_batch(session=s, name="zoo", kind="manifest"); s.commit()
    """
    batch = Batch(name=name, kind=kind, source=source)
    session.add(batch)
    session.flush()  # assigns the id now: the jobs added next refer to it
    return batch


def get_batch(*, session: Session, batch_id: str) -> Batch | None:
    """A batch by full id, or by a unique prefix of at least 6 characters."""
    return _by_id_or_prefix(session, Batch, batch_id)


def recorded_package_versions(job: Job) -> dict[str, str]:
    """Every package version a finished row says its result depended on (winner and, for auto, each candidate).

    Example:
        >>> recorded_package_versions(Job(runtime_versions={"onnxruntime": "1.32.0"}, measurements=None))
        {'onnxruntime': '1.32.0'}
    """
    out: dict[str, str] = {}
    cands = ((job.measurements or {}).get("extra") or {}).get("candidates") or []
    for versions in [c.get("versions") or {} for c in cands if isinstance(c, dict)] + [job.runtime_versions or {}]:
        out.update({str(k): str(v) for k, v in versions.items() if isinstance(v, str)})
    return out


def find_reusable_job(*, session: Session, model_sha256: str, recipe_sha256: str, backend: str,
                      torch_version: str, builder_sha256: str,
                      installed: Mapping[str, str] | None = None) -> Job | None:
    """The latest original (not itself reused) job that finished with a result for this exact input.

    The dedupe key is (model content hash, recipe hash, target backend, torch version, builder code), as
    in the pipeline's artifact cache: ``builder_sha256`` is the caller's own ``build_fingerprint()``, so a
    row built by other code (an older release, or any row from before the column) is never handed out.
    ``installed`` (package → version, what the caller has) rules out rows whose runtime packages differ
    where both know the package: a producer without openvino installed cannot check it, and then the
    builder hash alone decides. ``rejected`` counts as a result: the same inputs break the same budget
    again, and the measured numbers are kept either way.

    Example:
        >>> find_reusable_job(session=s, model_sha256=m, recipe_sha256=r, backend="fbgemm",
        ...                   torch_version="2.13.0+cpu", builder_sha256=b)  # doctest: +SKIP
    """
    q = (select(Job)
         .where(Job.model_sha256 == model_sha256, Job.recipe_sha256 == recipe_sha256, Job.backend == backend,
                Job.torch_version == torch_version, Job.builder_sha256 == builder_sha256,
                Job.status.in_(REUSABLE_STATUSES), Job.reused.is_(False))
         .order_by(Job.finished_at.desc(), Job.id)
         .limit(20))
    have = dict(installed or {})
    for job in session.scalars(q):
        rec = recorded_package_versions(job)
        if all(have[p] == v for p, v in rec.items() if p in have):
            return job
    return None


def create_reused_job(*, session: Session, source: Job, model_name: str, recipe_name: str, recipe_json: str,
                      recipe_sha256: str, backend: str, model_weights_uri: str | None, model_sha256: str,
                      batch_id: str | None = None, commit: bool = True) -> Job:
    """Insert an already-finished job that reuses ``source``'s result: nothing is enqueued for it.

    The row says ``reused=True`` and ``reused_from_job_id``, and copies the measured columns, so every
    listing and report shows the numbers without following the link.
    """
    now = utcnow()
    job = Job(model_name=model_name, model_weights_uri=model_weights_uri, model_sha256=model_sha256,
              recipe_name=recipe_name, recipe_json=recipe_json, recipe_sha256=recipe_sha256, backend=backend,
              batch_id=batch_id, status=source.status, attempts=0, reused=True,
              reused_from_job_id=source.reused_from_job_id or source.id,
              started_at=now, finished_at=now, **{c: getattr(source, c) for c in RESULT_COLUMNS})
    session.add(job)
    if commit:
        session.commit()
    return job


def batch_counts(*, session: Session, batch_id: str) -> dict[str, dict[str, int]]:
    """``{backend: {status: n}}`` for one batch, plus ``"reused"`` per backend (what a progress bar shows)."""
    q = (select(Job.backend, Job.status, Job.reused, func.count())
         .where(Job.batch_id == batch_id).group_by(Job.backend, Job.status, Job.reused))
    out: dict[str, dict[str, int]] = {}
    for backend, status, reused, n in session.execute(q).all():
        per = out.setdefault(backend, {})
        per[status] = per.get(status, 0) + n
        if reused:
            per["reused"] = per.get("reused", 0) + n
    return out


def list_batches(*, session: Session, kind: str | None = None, limit: int | None = 50) -> list[dict[str, Any]]:
    """Newest batches first, each with its job counts by status (one grouped query, not one per batch)."""
    q = select(Batch).order_by(Batch.created_at.desc(), Batch.id)
    if kind:
        q = q.where(Batch.kind == kind)
    if limit:
        q = q.limit(limit)
    batches = session.scalars(q).all()
    counts: dict[str, dict[str, int]] = {b.id: {} for b in batches}
    if batches:
        cq = (select(Job.batch_id, Job.status, Job.reused, func.count())
              .where(Job.batch_id.in_(list(counts))).group_by(Job.batch_id, Job.status, Job.reused))
        for batch_id, status, reused, n in session.execute(cq).all():
            c = counts[batch_id]
            c[status] = c.get(status, 0) + n
            if reused:
                c["reused"] = c.get("reused", 0) + n
    out = []
    for b in batches:
        c = counts[b.id]
        created = b.created_at if b.created_at.tzinfo else b.created_at.replace(tzinfo=timezone.utc)
        out.append({"id": b.id, "name": b.name, "kind": b.kind, "source": b.source, "created_at": created.isoformat(),
                    "total": sum(n for s, n in c.items() if s != "reused"),
                    **{s.value: c.get(s.value, 0) for s in JobStatus}, "reused": c.get("reused", 0)})
    return out


# ------------------------------------------------------------------ reconciler (docs/faults.md)
# On a *queued* row, ``heartbeat_at`` means "last published at": the reconciler stamps it when it sends
# the job's message again, so one job is re-published at most once per grace period. Nothing else
# writes it on queued rows (claim overwrites it when the job starts running).
def _last_published() -> Any:
    return func.coalesce(Job.heartbeat_at, Job.started_at, Job.created_at)


def _stale(stale_after_s: float) -> Any:
    return or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < db_now_plus(-stale_after_s))


def stale_running_jobs(*, session: Session, stale_after_s: float, limit: int = 1000) -> Sequence[Job]:
    """Running jobs whose worker has not beaten for ``stale_after_s`` seconds (database clock).

    Example:
        >>> stale_running_jobs(session=s, stale_after_s=60)  # doctest: +SKIP
        []
    """
    q = (select(Job).where(Job.status == JobStatus.running.value, _stale(stale_after_s))
         .order_by(Job.heartbeat_at, Job.id).limit(limit))
    return session.scalars(q).all()


def queued_jobs_published_before(*, session: Session, grace_s: float, limit: int = 1000) -> Sequence[Job]:
    """Queued jobs last published (or created) more than ``grace_s`` seconds ago (database clock).

    Example:
        >>> queued_jobs_published_before(session=s, grace_s=600)  # doctest: +SKIP
        []
    """
    q = (select(Job).where(Job.status == JobStatus.queued.value, _last_published() < db_now_plus(-grace_s))
         .order_by(Job.created_at, Job.id).limit(limit))
    return session.scalars(q).all()


def requeue_stale_job(*, session: Session, job_id: str, stale_after_s: float, error: str) -> bool:
    """running (stale heartbeat) → queued, stamped as published now; the caller sends the message.

    The WHERE repeats the staleness test, so a worker that beat in the meantime keeps its job, and of
    two reconcilers only one requeues (and publishes) it.

    Example:
        >>> requeue_stale_job(session=s, job_id=j, stale_after_s=60, error="worker lost")  # doctest: +SKIP
        True
    """
    return _update(session, job_id, and_(Job.status == JobStatus.running.value, _stale(stale_after_s)),
                   {"status": JobStatus.queued.value, "heartbeat_at": db_now(), "error": error[:2000]})


def mark_republished(*, session: Session, job_id: str, grace_s: float) -> bool:
    """Stamp a queued job as published now, if it was last published more than ``grace_s`` seconds ago.

    True for exactly one of several reconcilers racing on the job: only that one sends the message.

    Example:
        >>> mark_republished(session=s, job_id=j, grace_s=600)  # doctest: +SKIP
        True
    """
    return _update(session, job_id, and_(Job.status == JobStatus.queued.value,
                                         _last_published() < db_now_plus(-grace_s)),
                   {"heartbeat_at": db_now()})


def fail_exhausted_job(*, session: Session, job_id: str, max_attempts: int, stale_after_s: float,
                       error: str) -> bool:
    """Fail a job that used up its attempts: queued, or running with a stale heartbeat (poison).

    Example:
        >>> fail_exhausted_job(session=s, job_id=j, max_attempts=3, stale_after_s=60,
        ...                    error="gave up after 3 attempts")  # doctest: +SKIP
        True
    """
    where = and_(Job.attempts >= max_attempts,
                 or_(Job.status == JobStatus.queued.value,
                     and_(Job.status == JobStatus.running.value, _stale(stale_after_s))))
    return _update(session, job_id, where, {"status": JobStatus.failed.value, "error": error[:4000],
                                            "finished_at": db_now(), "heartbeat_at": None})


def fail_job_of_task(*, session: Session, job_id: str, task_id: str, error: str) -> bool:
    """running → failed, only if the claim was made by Celery task ``task_id`` (e.g. its hard time limit
    killed the process that held it; a job taken over since then is left alone).

    Example:
        >>> fail_job_of_task(session=s, job_id=j, task_id="c0ffee", error="hard time limit")  # doctest: +SKIP
        True
    """
    return _update(session, job_id, and_(Job.status == JobStatus.running.value, Job.celery_task_id == task_id),
                   {"status": JobStatus.failed.value, "error": error[:4000], "finished_at": db_now(),
                    "heartbeat_at": None})


# --------------------------------------------------------------------------- nightly recompression
# Used by ``modelpress.nightly``: a night's batch and jobs, and the comparison with the last good night.

def nightly_batch_id(night: str) -> str:
    """The batch id of a night (derived, so two racing submitters share one batch).

    Example:
        >>> nightly_batch_id("2025-01-31")
        'nightly-2025-01-31'
    """
    return f"nightly-{night}"


def get_or_create_nightly_batch(*, session: Session, night: str) -> Batch:
    """The one ``kind="nightly"`` batch of ``night``, created if missing.

    Example:
        >>> get_or_create_nightly_batch(session=s, night="2025-01-31").kind  # doctest: +SKIP
        'nightly'
    """
    batch_id = nightly_batch_id(night)
    batch = session.get(Batch, batch_id)
    if batch is not None:
        return batch
    session.add(Batch(id=batch_id, name=f"nightly {night}", kind="nightly"))
    try:
        session.commit()
    except IntegrityError:
        # Another submitter created it between our read and our insert: the primary key decides.
        session.rollback()
    batch = session.get(Batch, batch_id)
    assert batch is not None  # noqa: S101 - it exists: we or the racer just committed it
    return batch


def create_nightly_job(*, session: Session, night: str, batch_id: str, model_name: str, recipe_name: str,
                       recipe_json: str, recipe_sha256: str, backend: str,
                       time_limit_s: int | None = None) -> Job | None:
    """Insert one queued job of ``night`` in its own transaction; ``None`` if the night already has it.

    ``uq_jobs_nightly`` (model, recipe, backend, night) makes a re-triggered night a no-op per row,
    even when two submitters race: the loser's INSERT fails and nothing is published for it.

    Example:
        >>> create_nightly_job(session=s, night="2025-01-31", batch_id="nightly-2025-01-31", model_name="mlp",
        ...                    recipe_name="dynamic-int8", recipe_json="{}", recipe_sha256="0" * 64,
        ...                    backend="fbgemm")  # doctest: +SKIP
    """
    job = Job(model_name=model_name, recipe_name=recipe_name, recipe_json=recipe_json, recipe_sha256=recipe_sha256,
              backend=backend, batch_id=batch_id, night=night, status=JobStatus.queued.value, attempts=0,
              time_limit_s=time_limit_s)
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        exists = session.scalar(select(func.count()).select_from(Job).where(
            Job.model_name == model_name, Job.recipe_sha256 == recipe_sha256, Job.backend == backend,
            Job.night == night))
        if exists:
            return None
        raise  # some other constraint: a bug, not a re-trigger
    return job


def previous_good_nightly_job(*, session: Session, job: Job) -> Job | None:
    """The latest *succeeded* job of an earlier night with the same model, recipe and backend.

    Example:
        >>> previous_good_nightly_job(session=s, job=tonight)  # doctest: +SKIP
    """
    if job.night is None:
        return None
    return session.scalars(
        select(Job).where(Job.model_name == job.model_name, Job.recipe_sha256 == job.recipe_sha256,
                          Job.backend == job.backend, Job.night < job.night,
                          Job.status == JobStatus.succeeded.value)
        .order_by(Job.night.desc(), Job.finished_at.desc()).limit(1)
    ).first()


def set_regression(*, session: Session, job_id: str, regression: dict[str, Any] | None) -> bool:
    """Write (or clear, with ``None``) the job's ``regression`` JSON.

    Example:
        >>> set_regression(session=s, job_id=job.id, regression={"summary": "size +7%"})  # doctest: +SKIP
        True
    """
    # null(): a SQL NULL, not the JSON text 'null', so "no regression" is IS NULL on every database.
    return _update(session, job_id, true(), {"regression": regression if regression is not None else null()})


# --------------------------------------------------------------------------- leases (table ``locks``)
def acquire_lease(*, session: Session, name: str, holder: str, ttl_s: float) -> bool:
    """Take, or renew, the lease ``name`` for ``holder`` for ``ttl_s`` seconds; True while held.

    One conditional UPDATE (ours, or expired) and, if there was no row, one INSERT that the primary
    key lets only one racer win: at most one holder at any time, on SQLite and PostgreSQL. Expiry is
    set and tested with the database's clock, so two beats on hosts whose clocks differ agree on it.

    Example:
        >>> acquire_lease(session=s, name="beat", holder="host/42/ab12", ttl_s=60)  # doctest: +SKIP
        True
    """
    res = session.execute(update(Lock).where(Lock.name == name, or_(Lock.holder == holder, Lock.expires_at < db_now()))
                          .values(holder=holder, expires_at=db_now_plus(ttl_s))
                          .execution_options(synchronize_session=False))
    if res.rowcount == 1:
        session.commit()
        return True
    try:
        session.execute(insert(Lock).values(name=name, holder=holder, expires_at=db_now_plus(ttl_s)))
        session.commit()
    except IntegrityError:
        session.rollback()  # the row exists and is someone else's, unexpired
        return False
    return True


def release_lease(*, session: Session, name: str, holder: str) -> bool:
    """Give the lease up (only its holder can), so a standby takes over at once.

    Example:
        >>> release_lease(session=s, name="beat", holder="host/42/ab12")  # doctest: +SKIP
        True
    """
    res = session.execute(delete(Lock).where(Lock.name == name, Lock.holder == holder)
                          .execution_options(synchronize_session=False))
    session.commit()
    return res.rowcount == 1


def lease_holder(*, session: Session, name: str) -> str | None:
    """Who holds ``name`` now (an expired lease counts as free).

    Example:
        >>> lease_holder(session=s, name="beat")  # doctest: +SKIP
        'host/42/ab12'
    """
    return session.scalar(select(Lock.holder).where(Lock.name == name, Lock.expires_at >= db_now()))

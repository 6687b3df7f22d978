"""The optimize task: take a job id, check the world, call ``optimize``, persist. Thin on purpose.

Errors are sorted once, here:
- ``UserInputError`` (bad weights, unknown model, broken recipe) and the soft time limit: the job
  fails with the message; no retry can help.
- Transient faults (database or store unreachable): the job goes back to ``queued`` and the task is
  retried with exponential backoff, up to ``Settings.max_attempts`` claims in all.
- Anything else is a bug: the job fails with the exception text; retrying a bug only burns CPU.

A message for a job that is finished, or running elsewhere with a live heartbeat, does nothing;
one claimed through a stale heartbeat (its worker died) takes over. Torch is imported only here, in
the worker child, never in the Celery parent.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from datetime import timedelta
from typing import Any

from celery import Celery, Task
from celery.exceptions import Retry, SoftTimeLimitExceeded

from modelpress import __version__
from modelpress.models_db import (
    claim_job,
    fail_job,
    finish_job,
    get_job,
    heartbeat,
    is_finished,
    make_engine,
    make_sessionmaker,
    requeue_job,
)
from modelpress.models_db.schema import JobStatus, utcnow
from modelpress.settings import Settings
from modelpress.workers.routing import OPTIMIZE_TASK, route_for
from modelpress.workers.runtime import IDENTITY

log = logging.getLogger(__name__)

_SESSIONS: dict[tuple[int, str], Any] = {}


def _sessions(settings: Settings) -> Any:
    # One engine per process: a pooled connection must never cross a fork.
    key = (os.getpid(), settings.effective_database_url)
    if key not in _SESSIONS:
        _SESSIONS[key] = make_sessionmaker(make_engine(settings.effective_database_url))
    return _SESSIONS[key]


def _transient_errors() -> tuple[type[BaseException], ...]:
    from sqlalchemy.exc import DBAPIError, OperationalError

    return (OperationalError, DBAPIError, ConnectionError, TimeoutError, OSError)


class _Heartbeat:
    """Touches the row every few seconds so a dead worker can be told from a slow one."""

    def __init__(self, sessions: Any, job_id: str, token: str, interval: float) -> None:
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(sessions, job_id, token, interval), daemon=True)

    def _run(self, sessions: Any, job_id: str, token: str, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                with sessions() as s:
                    heartbeat(session=s, job_id=job_id, token=token)
            except Exception:  # noqa: BLE001 - a missed beat is not fatal; a stale one is handled by others
                log.warning("heartbeat for job %s failed", job_id, exc_info=True)

    def __enter__(self) -> "_Heartbeat":
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(timeout=5)


def result_columns(result: dict[str, Any]) -> dict[str, Any]:
    """Map an ``OptimizeResult.to_dict()`` onto the job row's columns (largest batch as headline)."""
    after = max(result["latency_after"], key=lambda s: s["batch_size"])
    before = next(s for s in result["latency_before"] if s["batch_size"] == after["batch_size"])
    return {
        "model_sha256": result["model_sha256"],
        "size_before_bytes": result["size_before_bytes"], "size_after_bytes": result["size_after_bytes"],
        "latency_batch_size": after["batch_size"], "latency_threads": after["threads"],
        "latency_before_median_ms": before["median_ms"], "latency_before_p90_ms": before["p90_ms"],
        "latency_after_median_ms": after["median_ms"], "latency_after_p90_ms": after["p90_ms"],
        "metric_name": result["metric_name"], "metric_before": result["metric_before"],
        "metric_after": result["metric_after"], "measurements": result, "artifact_uri": result["artifact_path"],
        "torch_version": result["torch_version"], "reused": bool(result.get("reused")),
        "error": result.get("reason"),
    }


def run_job(task: Task, job_id: str) -> str:
    """Body of ``modelpress.optimize``; returns a short word for logs and Flower."""
    settings: Settings = task.app.modelpress_settings  # type: ignore[attr-defined]
    sessions = _sessions(settings)
    with sessions() as s:
        job = get_job(session=s, job_id=job_id)
        if job is None:
            log.warning("job %s is not in the job table; dropping its message", job_id)
            return "missing"
        if is_finished(job.status):
            return "already-finished"
        if IDENTITY.backend and job.backend != IDENTITY.backend:
            # Misrouted (e.g. published by hand): pass it on to the right queue, touch nothing.
            task.app.send_task(OPTIMIZE_TASK, args=[job_id], **route_for(job.backend))
            return "rerouted"
        stale_before = utcnow() - timedelta(seconds=settings.heartbeat_stale_after)
        # Node name (e.g. "qnnpack-4242@host") first: the row then says which worker held the job.
        token = f"{task.request.hostname or IDENTITY.host}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        claimed = claim_job(session=s, job_id=job_id, host=IDENTITY.host, arch=IDENTITY.arch,
                            task_id=task.request.id, stale_before=stale_before,
                            max_attempts=settings.max_attempts, token=token)
        if not claimed:
            s.refresh(job)
            if job.attempts >= settings.max_attempts and not is_finished(job.status) and (
                job.status == JobStatus.queued.value or (job.heartbeat_at is not None and _naive(job.heartbeat_at) < _naive(stale_before))
            ):
                fail_job(session=s, job_id=job_id,
                         error=f"gave up after {job.attempts} attempts (the worker was lost each time; "
                               f"last error: {job.error or 'none recorded'})")
                return "poison"
            if job.status == JobStatus.running.value:
                # Running elsewhere. If that worker is alive this look is wasted; if it died, its
                # heartbeat goes stale and the next look takes the job over.
                raise task.retry(countdown=settings.heartbeat_stale_after, max_retries=settings.max_attempts * 4)
            return "not-claimed"
        recipe_json, model_name, weights = job.recipe_json, job.model_name, job.model_weights_uri

    def finish(status: str, **values: Any) -> None:
        with sessions() as s2:
            if status == JobStatus.failed.value:
                fail_job(session=s2, job_id=job_id, token=token, error=values.pop("error"), values=values)
            else:
                finish_job(session=s2, job_id=job_id, status=status, token=token, values=values)

    import torch  # only now, in the child

    from modelpress.optimize import Recipe, UserInputError, optimize_model

    engine = IDENTITY.backend or job.backend
    common = {"engine_used": torch.backends.quantized.engine, "torch_version": torch.__version__,
              "modelpress_version": __version__}
    try:
        with _Heartbeat(sessions, job_id, token, settings.heartbeat_interval):
            recipe = Recipe.from_json(recipe_json)
            result = optimize_model(
                model_name=model_name, recipe=recipe, engine=engine, store=settings.effective_artifact_store,
                weights=weights, allowlist=settings.factory_allowlist, max_weights_bytes=settings.max_weights_bytes,
                threads=settings.worker_threads, warmup=settings.latency_warmup, runs=settings.latency_runs,
                log=lambda m: log.info("job %s: %s", job_id[:8], m),
            ).to_dict()
        finish(result["status"], **{**common, **result_columns(result)})
        return result["status"]
    except UserInputError as e:
        finish(JobStatus.failed.value, error=str(e), **common)
        return "failed"
    except SoftTimeLimitExceeded:
        finish(JobStatus.failed.value, error=f"the job exceeded its soft time limit of {settings.task_soft_time_limit} s "
                                             "(raise MODELPRESS_TASK_SOFT_TIME_LIMIT or use a lighter recipe)", **common)
        return "failed"
    except Retry:
        raise
    except _transient_errors() as e:
        log.warning("job %s: transient error, will retry: %s", job_id, e)
        try:
            with sessions() as s3:
                requeue_job(session=s3, job_id=job_id, token=token, error=f"transient: {type(e).__name__}: {e}"[:2000])
        except Exception:  # noqa: BLE001 - if the database is the fault, the stale heartbeat recovers the job
            log.warning("job %s: could not requeue; the reconciler will", job_id)
        backoff = min(300, 5 * 2 ** (task.request.retries or 0))
        raise task.retry(exc=e, countdown=backoff, max_retries=settings.max_attempts) from None
    except Exception as e:  # noqa: BLE001 - a bug: record it where users look, do not retry
        log.exception("job %s failed with an unexpected error", job_id)
        finish(JobStatus.failed.value, error=f"internal error: {type(e).__name__}: {e}"[:4000], **common)
        return "failed"


def _naive(dt: Any) -> Any:
    # SQLite returns naive datetimes even for timezone=True columns; compare both as naive UTC.
    from datetime import timezone

    return dt.astimezone(timezone.utc).replace(tzinfo=None) if dt.tzinfo else dt


def register(app: Celery) -> None:
    """Register the task on ``app`` under its explicit name."""

    @app.task(name=OPTIMIZE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
    def optimize(self: Task, job_id: str) -> str:
        return run_job(self, job_id)

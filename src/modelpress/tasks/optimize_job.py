"""The optimize task: take a job id, check the world, call ``optimize``, persist. Thin on purpose.

Errors are sorted once, here:
- ``UserInputError`` (bad weights, unknown model, broken recipe) and the soft time limit: the job
  fails with the message; no retry can help.
- Transient faults (database or store unreachable): the job goes back to ``queued`` and the task is
  retried with exponential backoff, up to ``Settings.max_attempts`` claims in all.
- Anything else is a bug: the job fails with the exception text; retrying a bug only burns CPU.

A message for a job that is finished, or running elsewhere with a live heartbeat, does nothing;
one claimed through a stale heartbeat (its worker died) takes over. A run whose heartbeat is refused
(taken over meanwhile) abandons itself; a hard time limit is recorded by ``JobTask.on_failure`` in the
Celery parent (docs/faults.md). Torch is imported only here, in
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
from modelpress.workers.routing import OPTIMIZE_TASK
from modelpress.workers.runtime import IDENTITY

log = logging.getLogger(__name__)

def _sessions(settings: Settings) -> Any:
    from modelpress.models_db.engine import process_sessionmaker

    return process_sessionmaker(settings.effective_database_url)


def _transient_errors() -> tuple[type[BaseException], ...]:
    from sqlalchemy.exc import DBAPIError, OperationalError

    return (OperationalError, DBAPIError, ConnectionError, TimeoutError, OSError)


class _Heartbeat:
    """Touches the row every few seconds so a dead worker can be told from a slow one."""

    def __init__(self, sessions: Any, job_id: str, token: str, interval: float) -> None:
        self._stop = threading.Event()
        self.lost = threading.Event()  # set when the row says another claim (or the reconciler) took the job
        self._t = threading.Thread(target=self._run, args=(sessions, job_id, token, interval), daemon=True)

    def _run(self, sessions: Any, job_id: str, token: str, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                with sessions() as s:
                    mine = heartbeat(session=s, job_id=job_id, token=token)
            except Exception:  # noqa: BLE001 - a missed beat is not fatal; a stale one is handled by others
                log.warning("heartbeat for job %s failed", job_id, exc_info=True)
                continue
            if not mine:
                self._abandon(job_id)
                return

    def _abandon(self, job_id: str) -> None:
        # Our beats were missed long enough (e.g. a database outage) that the job was requeued and may
        # run elsewhere: stop this run instead of finishing it twice. SIGUSR1 is how billiard delivers
        # Celery's soft time limit, so every code path already unwinds cleanly from it; only send it
        # where that handler is installed (elsewhere SIGUSR1 would kill the process).
        import signal

        log.warning("job %s: this worker no longer holds the job (taken over after a stale heartbeat); "
                    "abandoning this run", job_id)
        self.lost.set()
        handler = signal.getsignal(signal.SIGUSR1)
        if callable(handler) and self._stop.is_set() is False:
            os.kill(os.getpid(), signal.SIGUSR1)

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
        "runtime": result.get("runtime", "torch"), "runtime_versions": result.get("runtime_versions") or None,
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
            from modelpress.workers.app import job_message_options

            task.app.send_task(OPTIMIZE_TASK, args=[job_id],
                               **job_message_options(settings, backend=job.backend, time_limit_s=job.time_limit_s))
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
        # A night's job exists to measure again (drift, regressions): never answer it from the cache.
        reuse_cached = job.night is None
        input_sha256 = job.model_sha256  # the producer's content id: staged weights' sha256, or the built-in id

    def finish(status: str, **values: Any) -> None:
        with sessions() as s2:
            if status == JobStatus.failed.value:
                recorded = fail_job(session=s2, job_id=job_id, token=token, error=values.pop("error"), values=values)
            else:
                recorded = finish_job(session=s2, job_id=job_id, status=status, token=token, values=values)
        # One "recorded" line per job across all workers is what the fault tests count.
        if recorded:
            log.info("job %s: recorded %s", job_id, status)
        else:
            log.warning("job %s: result %s not recorded: this worker no longer holds the job", job_id, status)

    import torch  # only now, in the child

    from modelpress.optimize import Recipe, UserInputError, optimize_model
    from modelpress.store import fetch_weights, publish_artifact, worker_dir

    engine = IDENTITY.backend or job.backend
    common = {"engine_used": torch.backends.quantized.engine, "torch_version": torch.__version__,
              "modelpress_version": __version__}
    hb = _Heartbeat(sessions, job_id, token, settings.heartbeat_interval)
    try:
        with hb:
            recipe = Recipe.from_json(recipe_json)
            # Through the store with a hash check: torch reads exactly the bytes that were submitted,
            # and a row cannot point a worker at a file outside the store.
            local_weights = fetch_weights(settings, weights, sha256=input_sha256) if weights else None
            result = optimize_model(
                model_name=model_name, recipe=recipe, engine=engine, store=worker_dir(settings),
                weights=local_weights, allowlist=settings.factory_allowlist, max_weights_bytes=settings.max_weights_bytes,
                threads=settings.worker_threads, warmup=settings.latency_warmup, runs=settings.latency_runs,
                log=lambda m: log.info("job %s: %s", job_id[:8], m), reuse=reuse_cached,
            ).to_dict()
        columns = result_columns(result)
        if input_sha256:
            # Dedupe looks rows up by the id the producer computed; the pipeline's own id for a
            # built-in model stays in ``measurements``.
            columns["model_sha256"] = input_sha256
        columns["artifact_uri"] = publish_artifact(settings, result["artifact_path"],
                                                   rejected=result["status"] == "rejected")
        finish(result["status"], **{**common, **columns})
        return result["status"]
    except UserInputError as e:
        finish(JobStatus.failed.value, error=str(e), **common)
        return "failed"
    except SoftTimeLimitExceeded:
        if hb.lost.is_set():
            return "abandoned"  # someone else holds the job now; it records the result, not us
        soft = _soft_limit(task, settings)
        finish(JobStatus.failed.value, error=f"the job exceeded its soft time limit of {soft} s (raise the recipe's "
                                             "time_limit_s or MODELPRESS_TASK_SOFT_TIME_LIMIT, or use a lighter recipe)",
               **common)
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


def _soft_limit(task: Task, settings: Settings) -> int:
    """The soft limit this message ran under: the job's own (``time_limit_s``) or the deployment's."""
    limits = getattr(task.request, "timelimit", None) or (None, None)
    return int(limits[1] or settings.task_soft_time_limit)


def _backoff(task: Task) -> int:
    return min(300, 5 * 2 ** (task.request.retries or 0))


class JobTask(Task):
    """Base of ``modelpress.optimize``: what must happen even when the task body never returns.

    Example:
        >>> app.task(name="x", base=JobTask)  # doctest: +SKIP
    """

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        # A hard time limit kills the child; Celery then calls this in the *parent* (no torch there).
        # The message is acknowledged (a retry would hit the limit again), so the row is failed here
        # with the reason, instead of waiting for the reconciler to spend the remaining attempts on it.
        from celery.exceptions import TimeLimitExceeded

        if not isinstance(exc, TimeLimitExceeded) or not args:
            return
        from modelpress.models_db.jobs import fail_job_of_task

        settings: Settings = self.app.modelpress_settings  # type: ignore[attr-defined]
        hard = f"{exc.args[0]:g}" if exc.args and isinstance(exc.args[0], (int, float)) else settings.task_time_limit
        engine = make_engine(settings.effective_database_url)  # disposed at once: the parent forks later
        try:
            with make_sessionmaker(engine)() as s:
                done = fail_job_of_task(
                    session=s, job_id=str(args[0]), task_id=task_id,
                    error=f"the job exceeded its hard time limit of {hard} s and its process was killed (it did not "
                          "stop at the soft limit); raise the recipe's time_limit_s or use a lighter recipe")
            log.warning("job %s: hard time limit of %s s; %s", args[0], hard,
                        "recorded failed" if done else "the job was no longer held by this task")
        except Exception:  # noqa: BLE001 - the reconciler finds the stale row and ends it
            log.warning("job %s: could not record its hard time limit", args[0], exc_info=True)
        finally:
            engine.dispose()


def register(app: Celery) -> None:
    """Register the task on ``app`` under its explicit name."""

    @app.task(name=OPTIMIZE_TASK, bind=True, base=JobTask, acks_late=True, reject_on_worker_lost=True)
    def optimize(self: Task, job_id: str) -> str:
        try:
            return run_job(self, job_id)
        except Retry:
            raise
        except _transient_errors() as e:
            # The database (or broker) was unreachable while looking the job up, claiming it or recording
            # a failure: try again later rather than drop the message. Whatever the row says then decides.
            log.warning("job %s: transient error outside the job's run, will retry: %s: %s", job_id,
                        type(e).__name__, e)
            raise self.retry(exc=e, countdown=_backoff(self), max_retries=_retries(self)) from None


def _retries(task: Task) -> int:
    # Enough retries to ride out an outage of a few minutes at the capped backoff.
    return 3 * task.app.modelpress_settings.max_attempts  # type: ignore[attr-defined]

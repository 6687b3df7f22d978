"""The optimize task: take a job id, check the world, call ``optimize``, persist. Thin on purpose.

Errors are sorted once, here:
- ``UserInputError`` (bad weights, unknown model, broken recipe) and the soft time limit: the job
  fails with the message; no retry can help.
- Transient faults (database or store unreachable): the job goes back to ``queued`` and the task is
  retried with exponential backoff, up to ``Settings.max_attempts`` claims in all.
- Anything else is a bug: the job fails with the exception text; retrying a bug only burns CPU.

A message for a job that is finished, or running elsewhere with a live heartbeat, does nothing;
one claimed through a stale heartbeat (its worker died) takes over. A run whose heartbeat is refused
(taken over meanwhile) abandons itself. Torch is imported only here, in the worker child, never in the
Celery parent.

A long step reports its progress (``optimize_model(progress=...)``, issue 22): ``_Progress`` keeps the latest
report and, from its own thread, writes it to the row (``models_db.record_progress``, at most every
``PROGRESS_MIN_INTERVAL_S``) and sends it to Flower as a ``task-progress`` event; neither can fail the job.

What runs around the job is worker plumbing, in ``workers.job_request``: the task's base ``JobTask`` (a hard
time limit is recorded by its ``on_failure`` in the Celery parent), its request class ``JobRequest`` (a child
lost near its memory ceiling fails the job) and ``job_memory_guard`` (docs/faults.md). This module imports
``workers`` modules; no ``workers`` module imports it (``tasks.registry`` registers it on the worker's app).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import uuid
from typing import Any, Callable

from celery import Celery, Task
from celery.exceptions import Retry, SoftTimeLimitExceeded

from modelpress import __version__
from modelpress.errors import MemoryCeilingError
from modelpress.models_db import (
    claim_job,
    fail_job,
    finish_job,
    get_job,
    heartbeat,
    is_finished,
    record_progress,
    requeue_job,
)
from modelpress.models_db.jobs import fail_exhausted_job
from modelpress.models_db.schema import JobStatus
from modelpress.settings import Settings
from modelpress.workers.job_request import JobTask, job_memory_guard
from modelpress.workers.routing import OPTIMIZE_TASK, job_message_options
from modelpress.workers.runtime import IDENTITY

log = logging.getLogger(__name__)

def _sessions(settings: Settings) -> Any:
    from modelpress.models_db.engine import process_sessionmaker

    return process_sessionmaker(settings.effective_database_url, **settings.db_engine_options())


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

    def pause(self) -> None:
        """Stop beating without abandoning: this run just failed its own row (its memory ceiling), so the
        next beat would be refused, and that refusal must not read as a takeover."""
        self._stop.set()

    def __enter__(self) -> "_Heartbeat":
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(timeout=5)


#: Least time between two progress writes of one job (row and Flower event): a step reports every few
#: seconds, and many children doing so at once must not load the database.
PROGRESS_MIN_INTERVAL_S = 2.0
#: A report bigger than this (as JSON) is not stored: the row holds a summary line's worth, not a log.
PROGRESS_MAX_BYTES = 4096


def progress_payload(progress: dict[str, Any]) -> dict[str, Any] | None:
    """A step's report as plain JSON the row can hold, or None when it is too big to store.

    Tensors and numpy scalars become numbers, a diverged ``nan``/``inf`` loss becomes the string ``"nan"``
    (PostgreSQL's JSON refuses NaN, and a diverging loss is exactly what a user wants to see), anything
    else its ``str``.

    Example:
        >>> progress_payload({"step": "distill_float", "iteration": 3, "loss": float("nan")})
        {'step': 'distill_float', 'iteration': 3, 'loss': 'nan'}
    """
    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if getattr(v, "ndim", None) == 0 and callable(getattr(v, "item", None)):
            v = v.item()  # a 0-d tensor or numpy scalar: what a training loop has in hand
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if v is None or isinstance(v, (str, int, float, bool)):
            return v
        return str(v)

    out = plain(progress)
    return out if len(json.dumps(out)) <= PROGRESS_MAX_BYTES else None


def _event_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """The report's fields that may travel in a task event without changing what Flower knows of the task.

    Flower merges an event's fields into its record of the task: a key such as ``name``, ``worker``,
    ``runtime`` or ``state`` would rename the job, break its page or feed the runtime histogram, and
    ``type``/``uuid``/``hostname``/``clock`` belong to the event itself. Those stay in the row only.

    Example:
        >>> _event_fields({"iteration": 3, "name": "x", "runtime": 1.0})
        {'iteration': 3}
    """
    from celery.events.state import Task as TaskState

    reserved = set(TaskState._fields) | {"type", "hostname", "utcoffset", "pid", "clock", "local_received",
                                         "blind", "retry", "retry_policy", "Event"}
    return {k: v for k, v in payload.items() if k not in reserved}


class _Progress:
    """``optimize_model``'s ``progress`` callback for one job: the latest report to the row and to Flower.

    The step calls it in the job's thread; it only keeps the report and returns, so a slow or unreachable
    database or broker never slows training. A thread writes the latest report at most every
    ``min_interval`` seconds with ``record_progress`` (only while this run holds the claim) and sends it
    as a ``task-progress`` event; a failed write is logged and the job goes on. The last report is
    written when the job's work ends (``__exit__``), before its result.

    What Flower 2.2 shows (read from ``celery.events.state.Task.event``, which Flower's state extends, and
    its templates): an event type Celery does not know sets the task's state to the type upper-cased, so
    the task reads ``PROGRESS`` instead of ``STARTED`` in the tasks list and on its page (a grey badge; the
    page's "Terminate" button is offered for ``STARTED`` only), and its ``Timestamp`` moves to the time of
    the latest report. The numbers themselves are merged into Flower's task record but not displayed: the
    page and ``/api/task/info`` list Celery's own fields only, so the figures are read with ``modelpress
    show`` (the row). ``task-succeeded``/``task-failed`` outrank it, so a finished task reads ``SUCCESS`` or
    ``FAILURE`` as before, and Flower's ``flower_events_total{type="task-progress"}`` counts the reports.

    Example:
        >>> with _Progress(task, sessions, job_id, token) as report:  # doctest: +SKIP
        ...     optimize_model(..., progress=report)
    """

    def __init__(self, task: Task, sessions: Any, job_id: str, token: str,
                 min_interval: float = PROGRESS_MIN_INTERVAL_S) -> None:
        # Read here, in the job's thread: ``task.request`` is thread-local, so ``task.send_event`` called from
        # the writer thread would send the event without the task's id. The writer sends it as send_event does.
        self._app, self._task_id, self._hostname = task.app, task.request.id, task.request.hostname
        self._sessions, self._job_id, self._token, self._interval = sessions, job_id, token, min_interval
        self._latest: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._wake, self._stop = threading.Event(), threading.Event()
        self._failing: set[str] = set()  # what failed last time: warned about once per outage
        self._t = threading.Thread(target=self._run, daemon=True, name=f"progress-{job_id[:8]}")

    def __call__(self, progress: dict[str, Any]) -> None:
        try:
            report = dict(progress)  # a copy: the step may reuse its dict for the next report
        except (TypeError, ValueError):
            log.warning("job %s: a step reported progress that is not a dict (%r); ignored", self._job_id,
                        type(progress).__name__)
            return
        with self._lock:
            self._latest = report
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                report, self._latest = self._latest, None
            if report is not None:
                self._publish(report)
            if self._stop.is_set():
                return
            self._stop.wait(self._interval)

    def _publish(self, report: dict[str, Any]) -> None:
        payload = progress_payload(report)
        if payload is None:
            log.warning("job %s: a progress report of over %d bytes was not stored", self._job_id, PROGRESS_MAX_BYTES)
            return
        # Each on its own: a database outage must not keep the report from Flower, nor a broker outage
        # from the row.
        self._attempt("write progress to the job row", lambda: self._write_row(payload))
        self._attempt("send the task-progress event", lambda: self._send_event(payload))

    def _write_row(self, payload: dict[str, Any]) -> None:
        with self._sessions() as s:
            # False when this run no longer holds the job: then nothing is written, and the heartbeat
            # (which sees the same refusal) abandons the run.
            record_progress(session=s, job_id=self._job_id, token=self._token, progress=payload)

    def _send_event(self, payload: dict[str, Any]) -> None:
        with self._app.events.default_dispatcher(hostname=self._hostname) as d:
            # No retry: a report that cannot be sent now is replaced by the next one in a few seconds.
            d.send("task-progress", uuid=self._task_id, retry=False, **_event_fields(payload))

    def _attempt(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - progress is for people watching; the job goes on without it
            if what not in self._failing:  # one warning per outage, not one every interval
                log.warning("job %s: could not %s (%s: %s); the job goes on", self._job_id, what,
                            type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
            self._failing.add(what)
        else:
            self._failing.discard(what)

    def __enter__(self) -> "_Progress":
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._wake.set()  # the last report, if any, is written before the thread ends
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
        "builder_sha256": result.get("builder_sha256") or None,
        **figure_columns(result),
    }


def figure_columns(result: dict[str, Any]) -> dict[str, Any]:
    """The columns that say what a figure means: eval batch, batch-1 metric, load while timing."""
    timing = (result.get("extra") or {}).get("timing") or {}
    return {
        "metric_eval_batch_size": result.get("metric_eval_batch_size"),
        "metric_after_b1": result.get("metric_after_b1"), "metric_b1_rows": result.get("metric_b1_rows"),
        "timing_load_avg": timing.get("load_avg_1m"), "timing_lock_wait_s": timing.get("lock_wait_s"),
    }


def run_job(task: Task, job_id: str) -> str:
    """Body of ``modelpress.optimize``; returns a short word for logs and Flower."""
    started = time.monotonic()  # the soft time limit counts from the task's start
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
            task.app.send_task(OPTIMIZE_TASK, args=[job_id],
                               **job_message_options(settings, backend=job.backend, time_limit_s=job.time_limit_s,
                                                     model=job.model_name, recipe=job.recipe_name))
            return "rerouted"
        # Node name (e.g. "qnnpack-4242@host") first: the row then says which worker held the job.
        token = f"{task.request.hostname or IDENTITY.host}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        claimed = claim_job(session=s, job_id=job_id, host=IDENTITY.host, arch=IDENTITY.arch,
                            task_id=task.request.id, stale_after_s=settings.heartbeat_stale_after,
                            max_attempts=settings.max_attempts, token=token)
        if not claimed:
            s.refresh(job)
            # Poison: one conditional UPDATE that re-checks attempts and staleness (database clock), so a
            # job claimed or finished since our read is never failed by this stale look.
            if job.attempts >= settings.max_attempts and fail_exhausted_job(
                    session=s, job_id=job_id, max_attempts=settings.max_attempts,
                    stale_after_s=settings.heartbeat_stale_after,
                    error=f"gave up after {job.attempts} attempts (the worker was lost each time; "
                          f"last error: {job.error or 'none recorded'})"):
                return "poison"
            s.refresh(job)
            if job.status == JobStatus.running.value:
                # Running elsewhere. If that worker is alive this look is wasted; if it died, its
                # heartbeat goes stale and the next look takes the job over.
                raise task.retry(countdown=settings.heartbeat_stale_after, max_retries=settings.max_attempts * 4)
            return "not-claimed"
        recipe_json, model_name, weights = job.recipe_json, job.model_name, job.model_weights_uri
        stored_ref = job.model_ref  # a model given by its files (issue 9): store refs, fetched below
        # A night's job exists to measure again (drift, regressions): never answer it from the cache.
        reuse_cached = job.night is None and not job.force  # --force means measured anew, too
        input_sha256 = job.model_sha256  # the producer's reuse key (intake.content_id, api.*_content_id)

    def finish(status: str, **values: Any) -> None:
        # Outside the work's try on purpose: a database blip here is retried (bounded, with backoff)
        # instead of requeueing the job and recomputing a result we already have.
        recorded = _record_with_retries(sessions, settings, job_id=job_id, token=token, status=status, values=values)
        # One "recorded" line per job across all workers is what the fault tests count.
        if recorded:
            log.info("job %s: recorded %s", job_id, status)
        else:
            log.warning("job %s: result %s not recorded: this worker no longer holds the job", job_id, status)

    def abandoned() -> str:
        # Someone else holds the job now (requeued after our heartbeat went stale): that run records
        # the result. This one writes nothing: no row, no artifact.
        log.warning("job %s: abandoned; nothing recorded by this run", job_id)
        return "abandoned"

    import torch  # only now, in the child

    from modelpress.optimize import Recipe, UserInputError, optimize_model
    from modelpress.worker_store import fetch_model_ref, fetch_weights, publish_artifact, worker_dir

    engine = IDENTITY.backend or job.backend
    common = {"engine_used": torch.backends.quantized.engine, "torch_version": torch.__version__,
              "modelpress_version": __version__, "emulated": settings.emulated}
    hb = _Heartbeat(sessions, job_id, token, settings.heartbeat_interval)
    report = _Progress(task, sessions, job_id, token)

    def memory_tripped(reason: str) -> bool:
        # Called in a thread of the memory watchdog (workers.memory) while the job is being stopped: the failure
        # is in the row before the watchdog would kill this process, so a redelivered message finds it finished.
        hb.pause()  # the beat after this write is refused; that must not read as a takeover
        recorded = _record_with_retries(sessions, settings, job_id=job_id, token=token,
                                        status=JobStatus.failed.value, values={"error": reason, **common})
        if recorded:
            log.info("job %s: recorded %s", job_id, JobStatus.failed.value)
        return recorded

    def memory_stopped() -> str:
        # The watchdog stopped the job for its memory and writes the failure; write it here if it could not.
        if not guard.wait_recorded():
            finish(JobStatus.failed.value, error=guard.reason or "the job went over its memory ceiling", **common)
        return "failed"

    guard = job_memory_guard(settings, job_id=job_id, task_id=task.request.id, on_trip=memory_tripped)
    try:
        with hb, guard, report:
            over: MemoryCeilingError | None = None
            try:
                recipe = Recipe.from_json(recipe_json)
                # Through the store with a hash check: torch reads exactly the bytes that were submitted,
                # and a row cannot point a worker at a file outside the store.
                # The content key names the file's sha256; the row's model_sha256 is the reuse key, not a file hash.
                local_weights = fetch_weights(settings, weights, sha256=None) if weights else None
                local_ref = fetch_model_ref(settings, stored_ref) if stored_ref else None
                result = optimize_model(
                    model_name=None if local_ref else model_name, model_ref=local_ref, stored_ref=stored_ref,
                    recipe=recipe, engine=engine, store=worker_dir(settings),
                    weights=local_weights, allowlist=settings.factory_allowlist, max_weights_bytes=settings.max_weights_bytes,
                    threads=settings.worker_threads, warmup=settings.latency_warmup, runs=settings.latency_runs,
                    log=lambda m: log.info("job %s: %s", job_id[:8], m), reuse=reuse_cached,
                    timing_lock_dir=settings.timing_lock_dir, progress=report,
                    deadline=started + _soft_limit(task, settings),
                ).to_dict()
            except Exception as e:  # noqa: BLE001 - sorted here only when it is the memory ceiling's doing
                over = guard.explain(e)
                if over is None:
                    raise
            # Raised outside the except: the failed job's frames (and the memory they hold) are freed first.
            if over is not None:
                raise over
        if guard.tripped.is_set():
            return memory_stopped()  # the job swallowed the stop and finished anyway: still failed
        if hb.lost.is_set():
            return abandoned()
        columns = result_columns(result)
        if input_sha256:
            # Dedupe looks rows up by the id the producer computed; the pipeline's own id for a
            # built-in model stays in ``measurements``.
            columns["model_sha256"] = input_sha256
        columns["artifact_uri"] = publish_artifact(settings, result["artifact_path"],
                                                   rejected=result["status"] == "rejected")
    except UserInputError as e:
        if isinstance(e, MemoryCeilingError) and e.recorded:
            return memory_stopped()
        if hb.lost.is_set():
            return abandoned()  # whatever it says, this run no longer owns the job
        from modelpress.intake import name_staged_files  # store-key file names → "eval data (data.eval, …)"

        finish(JobStatus.failed.value, error=name_staged_files(str(e), stored_ref), **common)
        return "failed"
    except SoftTimeLimitExceeded:
        if guard.tripped.is_set():
            return memory_stopped()  # the watchdog's stop arrived outside the job's body
        if hb.lost.is_set():
            return abandoned()
        soft = _soft_limit(task, settings)
        finish(JobStatus.failed.value, error=f"the job exceeded its soft time limit of {soft} s (raise the recipe's "
                                             "time_limit_s or MODELPRESS_TASK_SOFT_TIME_LIMIT, or use a lighter recipe)",
               **common)
        return "failed"
    except Retry:
        raise
    except _transient_errors() as e:
        if hb.lost.is_set():
            return abandoned()
        log.warning("job %s: transient error, will retry: %s", job_id, e)
        try:
            with sessions() as s3:
                requeue_job(session=s3, job_id=job_id, token=token, error=f"transient: {type(e).__name__}: {e}"[:2000])
        except Exception:  # noqa: BLE001 - if the database is the fault, the stale heartbeat recovers the job
            log.warning("job %s: could not requeue; the reconciler will", job_id)
        backoff = min(300, 5 * 2 ** (task.request.retries or 0))
        raise task.retry(exc=e, countdown=backoff, max_retries=settings.max_attempts) from None
    except Exception as e:  # noqa: BLE001 - a bug: record it where users look, do not retry
        if hb.lost.is_set():
            return abandoned()
        log.exception("job %s failed with an unexpected error", job_id)
        finish(JobStatus.failed.value, error=f"internal error: {type(e).__name__}: {e}"[:4000], **common)
        return "failed"
    finish(result["status"], **{**common, **columns})
    return result["status"]


def _record_with_retries(sessions: Any, settings: Settings, *, job_id: str, token: str, status: str,
                         values: dict[str, Any]) -> bool:
    """Write a job's final state, retrying transient database errors with exponential backoff.

    ``MODELPRESS_RESULT_WRITE_ATTEMPTS`` tries, waiting ``MODELPRESS_RESULT_WRITE_BACKOFF`` s, then twice
    that, ... (capped at 30 s): a restart or failover of a minute does not cost a recomputation. The
    write is token-guarded, so a retry after a write that did land (the reply was lost) returns False
    and changes nothing. After the last try the error propagates: the task's retry path takes over.

    Example:
        >>> _record_with_retries(sessions, settings, job_id=j, token=t, status="succeeded", values={})  # doctest: +SKIP
        True
    """
    delay = settings.result_write_backoff
    for attempt in range(1, settings.result_write_attempts + 1):
        try:
            with sessions() as s:
                if status == JobStatus.failed.value:
                    values = dict(values)
                    return fail_job(session=s, job_id=job_id, token=token, error=values.pop("error"), values=values)
                return finish_job(session=s, job_id=job_id, status=status, token=token, values=values)
        except _transient_errors() as e:
            if attempt >= settings.result_write_attempts:
                log.error("job %s: could not record its result after %d tries (%s: %s); giving it up",
                          job_id, attempt, type(e).__name__, e)
                raise
            log.warning("job %s: recording the result failed (%s: %s); try %d of %d again in %.1f s", job_id,
                        type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "", attempt + 1,
                        settings.result_write_attempts, delay)
            time.sleep(delay)
            delay = min(30.0, delay * 2)
    return False  # unreachable: the loop returns or raises


def _soft_limit(task: Task, settings: Settings) -> int:
    """The soft limit this message ran under: the job's own (``time_limit_s``) or the deployment's."""
    limits = getattr(task.request, "timelimit", None) or (None, None)
    return int(limits[1] or settings.task_soft_time_limit)


def _backoff(task: Task) -> int:
    return min(300, 5 * 2 ** (task.request.retries or 0))


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

"""The optimize job's side of the worker process: its Celery request and task classes and its memory guard.

Worker plumbing that ``tasks.optimize_job`` runs inside, kept out of the task body:

- ``JobTask``, the base of ``modelpress.optimize``: a hard time limit kills the child, and Celery then calls
  ``JobTask.on_failure`` in the worker's *parent* (no torch there), which fails the row with the reason;
- ``JobRequest``, its request class in the parent: a child lost near its job's memory ceiling fails the job
  instead of being redelivered to kill another child (docs/faults.md, "Memory ceiling");
- ``job_memory_guard``, the child's side of that ceiling: a ``workers.memory.JobMemoryGuard`` sized for this
  worker (no ceiling outside a pool child) that leaves its marks where ``JobRequest`` looks for them.

Imports ``models_db``, ``settings`` and ``workers`` modules only; never a task module (``modelpress.tasks``)
and never torch.

Example:
    >>> app.task(name="x", base=JobTask).Request is JobRequest  # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from celery import Task
from celery.exceptions import WorkerLostError
from celery.worker.request import Request

from modelpress.models_db import make_engine, make_sessionmaker
from modelpress.settings import Settings
from modelpress.workers.memory import JobMemoryGuard
from modelpress.workers.runtime import IDENTITY, job_memory_ceiling

log = logging.getLogger(__name__)


def job_memory_guard(settings: Settings, *, job_id: str, task_id: str | None,
                     on_trip: Callable[[str], bool]) -> JobMemoryGuard:
    """The memory guard for one job run in this process: this worker's per-job ceiling in a pool child, none
    elsewhere, its marks in this worker's marks folder (read by ``JobRequest`` if the child is lost).

    ``on_trip(reason)`` is called from the watchdog's thread once the job is stopped for its memory; it
    records the failure and returns whether it did (``workers.memory``).

    Example:
        >>> with job_memory_guard(settings, job_id=j, task_id=t, on_trip=record) as guard:  # doctest: +SKIP
        ...     run_the_job()
    """
    return JobMemoryGuard(job_memory_ceiling(settings) if _in_pool_child() else 0, job_id=job_id,
                          task_id=task_id, marks_dir=IDENTITY.memory_marks, on_trip=on_trip)


def _in_pool_child() -> bool:
    # The ceiling is a process-wide rlimit: in a solo or threads pool it would bind the worker's own consumer.
    from billiard.process import current_process

    return current_process().name != "MainProcess"


class JobRequest(Request):
    """Celery's request, in the worker's *parent*: a child lost near its job's memory ceiling fails the job.

    With ``reject_on_worker_lost`` a lost child's message is redelivered: right for a ``kill -9`` or a host
    hiccup, wrong for a job that needs more memory than its ceiling (each delivery kills another child, up to
    ``MODELPRESS_MAX_ATTEMPTS``). The child leaves a mark once its job passes 90 % of the ceiling
    (``workers.memory``); if the child dies with that mark, the row is failed here with the reason before
    Celery requeues the message, which then finds the job finished and does nothing.

    Example:
        >>> app.task(name="x", base=JobTask).Request is JobRequest  # doctest: +SKIP
        True
    """

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)  # billiard wraps it in ExceptionWithTraceback
        if isinstance(exc, WorkerLostError) and self.worker_pid:
            try:
                _fail_lost_child_job(self, exc)
            except Exception:  # noqa: BLE001 - redelivery (as before) is the fallback, never a crashed parent
                log.warning("job %s: could not check its lost worker's memory mark", self.args, exc_info=True)
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


def _fail_lost_child_job(request: Request, exc: BaseException) -> None:
    from modelpress.models_db.jobs import fail_job_of_task
    from modelpress.workers.memory import clear_mark, lost_child_reason, near_mark

    mark = near_mark(IDENTITY.memory_marks, request.worker_pid)
    clear_mark(IDENTITY.memory_marks, request.worker_pid, os.getpid())
    args = request.args or []
    if not mark or not args or mark.get("task_id") != request.id or mark.get("job_id") != str(args[0]):
        return  # lost far below its ceiling (or another job's leftover): a lost worker, redelivered
    # "Worker exited prematurely: signal 9 (SIGKILL) Job: 0." → "signal 9 (SIGKILL)"
    status = str(exc).partition("prematurely: ")[2].partition(" Job:")[0].rstrip(".") or "exited"
    reason = lost_child_reason(mark, status)
    settings: Settings = request.task.app.modelpress_settings  # type: ignore[attr-defined]
    engine = make_engine(settings.effective_database_url, **settings.db_engine_options())
    try:
        with make_sessionmaker(engine)() as s:
            done = fail_job_of_task(session=s, job_id=str(args[0]), task_id=request.id, error=reason)
    finally:
        engine.dispose()
    if done:
        log.warning("job %s: recorded failed: %s", args[0], reason)
    else:
        log.warning("job %s: its worker process was lost near its memory ceiling; the job was already finished "
                    "(the child recorded it before it died)", args[0])


class JobTask(Task):
    """Base of ``modelpress.optimize``: what must happen even when the task body never returns.

    Example:
        >>> app.task(name="x", base=JobTask)  # doctest: +SKIP
    """

    Request = JobRequest  # the parent's side of the memory ceiling (a child lost near it)

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
        # Disposed at once: the parent forks later. With the timeouts: a hung database must not stall the parent.
        engine = make_engine(settings.effective_database_url, **settings.db_engine_options())
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


__all__ = ["JobRequest", "JobTask", "job_memory_guard"]

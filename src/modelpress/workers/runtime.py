"""Per-process worker state and the signal handlers that set torch up in each child.

The parent process never imports torch: a parent that ran a parallel op deadlocks its forked
children in libgomp (field notes). Each child sets its thread count and quantized engine in
``worker_process_init``.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
from dataclasses import dataclass, field

from celery import bootsteps
from celery.signals import celeryd_after_setup, worker_process_init, worker_ready

log = logging.getLogger(__name__)


@dataclass
class WorkerIdentity:
    backend: str | None = None
    threads: int = 1
    host: str = socket.gethostname()
    arch: str = platform.machine()
    runtimes: dict[str, str | None] = field(default_factory=dict)  # name → None (usable) or why not
    concurrency: int | None = None  # the pool's size, as Celery resolved it (workers.memory's auto ceiling)
    memory_marks: str | None = None  # folder where a child's running job says how near its memory ceiling it is


IDENTITY = WorkerIdentity()


def configure_worker(backend: str, threads: int) -> None:
    """Called in the parent before Celery starts: environment for children, no torch import."""
    IDENTITY.backend = backend
    IDENTITY.threads = threads
    # Belt and braces with set_num_threads below: OpenMP reads these when torch is first imported.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    # Advertise the runtimes this worker can build (issue 11); a job for a missing one fails in the child with
    # the same reason (RuntimeUnavailableError, no retry).
    from modelpress.optimize.runtimes.registry import installed_runtimes

    IDENTITY.runtimes = installed_runtimes()
    worker_ready.connect(_advertise_runtimes, weak=False, dispatch_uid="modelpress-advertise-runtimes")
    worker_process_init.connect(_init_child, weak=False)
    worker_ready.connect(_reconcile_on_ready, weak=False, dispatch_uid="modelpress-reconcile-on-ready")
    # Before the pool forks: the children inherit what it sets (docs/faults.md, "Memory ceiling").
    celeryd_after_setup.connect(_before_pool_starts, weak=False, dispatch_uid="modelpress-memory-setup")
    worker_ready.connect(_log_memory_ceiling, weak=False, dispatch_uid="modelpress-log-memory-ceiling")


def _before_pool_starts(sender: object = None, instance: object = None, **_: object) -> None:
    concurrency = getattr(instance, "concurrency", None)
    if isinstance(concurrency, int) and concurrency > 0:
        IDENTITY.concurrency = concurrency
    settings = getattr(getattr(instance, "app", None), "modelpress_settings", None)
    if settings is not None:
        from modelpress.workers.memory import prepare_marks_dir

        IDENTITY.memory_marks = prepare_marks_dir(settings.home / "memory-marks")


def job_memory_ceiling(settings: object) -> int:
    """Bytes one job may allocate in this worker's children (0: no ceiling); see ``workers.memory``.

    Example:
        >>> from modelpress.settings import Settings
        >>> job_memory_ceiling(Settings(home="/tmp/mp-doc", job_memory_limit="1.5GiB"))
        1610612736
    """
    from modelpress.workers.memory import host_memory_bytes, resolve_ceiling

    configured = getattr(settings, "job_memory_limit", None)
    return resolve_ceiling(configured, concurrency=_concurrency(settings),
                           host_bytes=None if configured is not None else host_memory_bytes())


def _concurrency(settings: object) -> int:
    return IDENTITY.concurrency or int(getattr(settings, "worker_concurrency", 1) or 1)


def _log_memory_ceiling(sender: object = None, **_: object) -> None:
    from modelpress.workers.memory import describe_ceiling, host_memory_bytes

    settings = getattr(getattr(sender, "app", None), "modelpress_settings", None)
    if settings is not None:
        log.info("worker for %s: %s", IDENTITY.backend, describe_ceiling(
            settings.job_memory_limit, concurrency=_concurrency(settings), host_bytes=host_memory_bytes()))


def _advertise_runtimes(**_: object) -> None:
    # At worker_ready Celery's logging is set up, so the line lands in the worker's log.
    log.info("worker for %s: runtimes %s", IDENTITY.backend, ", ".join(
        f"{n} ({'ok' if why is None else 'unavailable: ' + why})" for n, why in IDENTITY.runtimes.items()))


def _reconcile_on_ready(sender: object = None, **_: object) -> None:
    # In the parent, in a thread (no torch; the consumer is not held up by a slow database): a worker
    # restarted after a crash finds the jobs its predecessor held, without waiting for beat or for
    # Redis's visibility timeout (an hour by default, field notes).
    from modelpress.reconcile import reconcile_at_worker_start

    app = getattr(sender, "app", None)
    if app is not None and hasattr(app, "modelpress_settings"):
        reconcile_at_worker_start(app)


class ReconcileOnReconnect(bootsteps.StartStopStep):
    """Consumer bootstep: after the broker connection comes back, reconcile as at worker start.

    Celery restarts the consumer's blueprint when its broker connection is lost and re-made, calling
    every consumer step's ``start`` again (``Consumer.start``; ``restart_count`` counts the restarts).
    ``worker_ready`` fires only once, so without this a Redis restart that lost every queued message left
    those jobs stranded until beat's next reconcile (none, if no beat runs).

    Example:
        >>> app.steps["consumer"].add(ReconcileOnReconnect)  # doctest: +SKIP
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: object) -> None:
        if getattr(c, "restart_count", 0) <= 0:
            return  # the first start: worker_ready runs the reconciler
        app = getattr(c, "app", None)
        if app is None or not hasattr(app, "modelpress_settings"):
            return
        from modelpress.reconcile import reconcile_at_worker_start

        log.warning("broker connection re-established (restart %d): reconciling the job table",
                    getattr(c, "restart_count", 0))
        reconcile_at_worker_start(app)


def install_reconnect_reconcile(app: object) -> None:
    """Add ``ReconcileOnReconnect`` to ``app``'s consumer steps (before the worker starts).

    Example:
        >>> install_reconnect_reconcile(make_worker_app(settings))  # doctest: +SKIP
    """
    app.steps["consumer"].add(ReconcileOnReconnect)  # type: ignore[attr-defined]


def _init_child(**_: object) -> None:
    import torch

    torch.set_num_threads(IDENTITY.threads)
    if IDENTITY.backend:
        torch.backends.quantized.engine = IDENTITY.backend
    log.info("worker child %s: torch %s, engine %s, %d thread(s)", os.getpid(), torch.__version__,
             torch.backends.quantized.engine, torch.get_num_threads())

"""The Celery app, built from ``Settings`` (no global app, no torch import here).

Long, CPU-heavy, idempotent jobs: acks late (a lost child's message is redelivered), prefetch 1 (a
busy child does not hoard messages), soft/hard time limits, and a Redis visibility timeout above the
hard limit so a still-running job is not delivered again.

Example:
    >>> from modelpress.settings import Settings
    >>> app = make_app(Settings(home="/tmp/mp-doc"))
    >>> sorted(q.name for q in app.conf.task_queues)
    ['fbgemm', 'ops', 'qnnpack']
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.app.amqp import AMQP

from modelpress.settings import BACKENDS, Settings
from modelpress.workers.routing import (  # noqa: F401 - RECONCILE_TASK, job_message_options: older import path
    NIGHTLY_TASK,
    RECONCILE_TASK,
    job_message_options,
    ops_queue,
    ops_route,
    route_for,
    task_queues,
)
from modelpress.workers.schedule import beat_schedule


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    if settings.is_embedded_broker:
        # Absolute paths for all four folders: kombu's control folder defaults to a relative path.
        return {**settings.broker_folders(), "polling_interval": 0.05}
    opts: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout}
    if settings.queue_prefix:
        opts["global_keyprefix"] = settings.queue_prefix
    return opts


class ShadowNamedAMQP(AMQP):
    """Celery's message builder, except that the ``task-sent`` event carries the display name (shadow).

    Why: Celery puts the task's real name (``modelpress.optimize``) in ``task-sent`` and the shadow
    (``mlp dynamic-int8 fbgemm``) in every event the worker sends. Events reach Flower in arrival order,
    and a ``task-sent`` that arrives after ``task-received`` (a loaded producer host, an idle worker)
    overwrites the name, so the same kind of job showed under two names, in the task list and in the
    ``task`` label of Flower's metrics. With this, every event of a job names it the same way.

    Example:
        >>> from modelpress.settings import Settings
        >>> app = make_app(Settings(home="/tmp/mp-doc"))
        >>> msg = app.amqp.create_task_message("id-1", "modelpress.optimize", ["job-1"], {},
        ...                                    create_sent_event=True, shadow="mlp dynamic-int8 fbgemm")
        >>> msg.sent_event["name"], msg.headers["task"]
        ('mlp dynamic-int8 fbgemm', 'modelpress.optimize')
    """

    def as_task_v2(self, *args: Any, **kwargs: Any) -> Any:
        # Celery calls this positionally (shadow is the 20th argument), so read the shadow back from the
        # headers it built rather than from our own parameters.
        message = super().as_task_v2(*args, **kwargs)
        shadow = message.headers.get("shadow")
        if shadow and message.sent_event is not None:
            message.sent_event["name"] = shadow
        return message


def make_app(settings: Settings) -> Celery:
    """A Celery app for ``settings``: queues, routes, limits and the beat schedule, no task bodies.

    Publishers (producer, beat, reconciler, Flower) send tasks by name and need nothing more; a worker
    process registers the task bodies with ``tasks.registry.make_worker_app``. So this module imports
    no task module, and no task module needs to import it back (no import circles).
    """
    if settings.is_embedded_broker:
        for folder in settings.broker_folders().values():
            __import__("os").makedirs(folder, exist_ok=True)
    app = Celery("modelpress", broker=settings.effective_broker_url, set_as_current=False, amqp=ShadowNamedAMQP)
    app.conf.update(
        # ops: light bookkeeping (nightly submission) consumed by `modelpress ops-worker`, so it never
        # waits behind a backlog of optimize jobs on the backend queues.
        task_queues=[*task_queues(), ops_queue()],
        task_create_missing_queues=False,
        task_default_queue=None,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # the SQL job table is the result store
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        # A lost broker connection cancels running acks-late jobs: their messages may be redelivered
        # elsewhere, and the job table (claim + heartbeat) decides who finishes them.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # SIGQUIT (cold shutdown): give running jobs this long, then cancel them and return their
        # messages; "on idle" also returns held ETA messages (our retries) to Redis.
        worker_soft_shutdown_timeout=settings.worker_soft_shutdown_timeout,
        worker_enable_soft_shutdown_on_idle=True,
        # Celery checks after each job: a child whose resident size grew past this (KiB) is replaced,
        # so a leak in one model's job does not accumulate for days.
        worker_max_memory_per_child=settings.worker_max_memory_per_child,
        # The reconciler goes to the ops queue by default (`modelpress ops-worker`): on a backend queue it
        # would wait behind the very backlog whose lost jobs it is meant to find.
        task_routes=[{RECONCILE_TASK: (ops_route() if (settings.reconcile_queue or "ops") == "ops"
                                       else route_for(settings.reconcile_queue)),
                      NIGHTLY_TASK: ops_route()}, route_back],
        # Beat: crontabs are read in UTC (MODELPRESS_NIGHTLY_SCHEDULE), whatever the host's zone.
        beat_schedule=beat_schedule(settings),
        timezone="UTC",
        enable_utc=True,
        # Each child imports torch once (~2 s, more under load); the default 4 s would kill it.
        worker_proc_alive_timeout=60,
        worker_send_task_events=True,  # Flower shows tasks live
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
    )
    app.modelpress_settings = settings  # type: ignore[attr-defined]
    return app


def route_back(name: str, args: Any, kwargs: Any, options: dict[str, Any], task: Any = None, **_: Any) -> dict[str, Any] | None:
    """Router for ``task.retry()``: send the retry back to the queue its message was delivered from.

    A retry's options carry the delivery's exchange and routing key but no queue name, and there is no
    default queue (on purpose: nothing may land on a queue no worker reads), so without this every retry
    failed to publish ("'NoneType' object has no attribute 'pop'") and the message was dropped.

    Example:
        >>> route_back("modelpress.optimize", [], {}, {"exchange": "qnnpack", "routing_key": "qnnpack"})
        {'queue': 'qnnpack'}
    """
    key = options.get("routing_key")
    if "queue" not in options and key in BACKENDS:
        return {"queue": key}
    return None

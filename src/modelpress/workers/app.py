"""The Celery app, built from ``Settings`` (no global app, no torch import here).

Long, CPU-heavy, idempotent jobs: acks late (a lost child's message is redelivered), prefetch 1 (a
busy child does not hoard messages), soft/hard time limits, and a Redis visibility timeout above the
hard limit so a still-running job is not delivered again.

Example:
    >>> from modelpress.settings import Settings
    >>> app = make_app(Settings(home="/tmp/mp-doc"))
    >>> sorted(q.name for q in app.conf.task_queues)
    ['fbgemm', 'qnnpack']
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from modelpress.settings import Settings
from modelpress.workers.routing import task_queues


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    if settings.is_embedded_broker:
        # Absolute paths for all four folders: kombu's control folder defaults to a relative path.
        return {**settings.broker_folders(), "polling_interval": 0.05}
    opts: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout}
    if settings.queue_prefix:
        opts["global_keyprefix"] = settings.queue_prefix
    return opts


def make_app(settings: Settings) -> Celery:
    """A Celery app for ``settings`` with the optimize task registered."""
    if settings.is_embedded_broker:
        for folder in settings.broker_folders().values():
            __import__("os").makedirs(folder, exist_ok=True)
    app = Celery("modelpress", broker=settings.effective_broker_url, set_as_current=False)
    app.conf.update(
        task_queues=task_queues(),
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
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Each child imports torch once (~2 s, more under load); the default 4 s would kill it.
        worker_proc_alive_timeout=60,
        worker_send_task_events=True,  # Flower shows tasks live
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
    )
    app.modelpress_settings = settings  # type: ignore[attr-defined]
    from modelpress.tasks.optimize_job import register

    register(app)
    return app

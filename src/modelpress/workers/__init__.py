"""Celery app, routing and worker signals. Importing this imports Celery but never torch."""

from modelpress.workers.app import make_app
from modelpress.workers.routing import OPTIMIZE_TASK, UnknownBackendError, route_for, task_queues

__all__ = ["OPTIMIZE_TASK", "UnknownBackendError", "make_app", "route_for", "task_queues"]

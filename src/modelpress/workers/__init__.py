"""Celery plumbing: the app, queues and routing, the worker process's setup, beat, Flower, memory ceilings.

What lives here:

- ``app``: ``make_app``, the Celery app built from ``Settings`` (queues, routes, limits, beat schedule;
  no task bodies: publishers send tasks by name);
- ``routing``: queues, task names (``OPTIMIZE_TASK``...) and per-job message options;
- ``schedule`` and ``beat``: the beat schedule and ``modelpress beat``; ``flower``: ``modelpress flower``;
- ``runtime``: the worker process's identity and the signal handlers that set up each child;
- ``memory``: the per-job memory ceiling (limit, watchdog, marks);
- ``job_request``: the optimize task's Celery base and request classes (hard time limit, a child lost
  near its memory ceiling) and ``job_memory_guard``.

What it may import (direction: ``tasks`` → ``workers``, never back): Celery and kombu, ``settings``,
``errors``, ``models_db``, ``modelpress.reconcile`` (``runtime``: reconcile when a worker starts) and
``optimize.runtimes.registry`` (``runtime``, inside a function). Never ``modelpress.tasks``, not even
inside a function: task modules import ``workers``, and the worker's app with the task bodies registered
is ``tasks.registry.make_worker_app``. Importing this package imports Celery but never torch.
"""

from modelpress.workers.app import make_app
from modelpress.workers.routing import OPTIMIZE_TASK, UnknownBackendError, route_for, task_queues

__all__ = ["OPTIMIZE_TASK", "UnknownBackendError", "make_app", "route_for", "task_queues"]

"""The worker entry point's app: ``make_app`` plus every task body a worker runs, listed explicitly.

The Celery app module (``workers.app``) knows queues and routes only; the task modules know task names
(``workers.routing``) and may publish through an app they are given. This module is the one place that
imports both the app and the task modules. It lives in ``modelpress.tasks``, not ``modelpress.workers``,
because task modules import ``workers`` (routing, the worker's identity, ``workers.job_request``) and
nothing in ``workers`` may import a task module back: so there is no import circle.

Example:
    >>> from modelpress.settings import Settings
    >>> app = make_worker_app(Settings(home="/tmp/mp-doc"))
    >>> sorted(n for n in app.tasks if n.startswith("modelpress."))
    ['modelpress.nightly', 'modelpress.optimize', 'modelpress.reconcile']
"""

from __future__ import annotations

from celery import Celery

from modelpress import nightly, reconcile
from modelpress.settings import Settings
from modelpress.tasks import optimize_job
from modelpress.workers.app import make_app

# Each module exposes ``register(app)``; add a line here for a new task module.
TASK_MODULES = (optimize_job, reconcile, nightly)


def make_worker_app(settings: Settings) -> Celery:
    """A Celery app for a worker process: ``make_app(settings)`` with every task body registered.

    Example:
        >>> make_worker_app(Settings(home="/tmp/mp-doc")).tasks["modelpress.optimize"].acks_late
        True
    """
    app = make_app(settings)
    for module in TASK_MODULES:
        module.register(app)
    return app


__all__ = ["TASK_MODULES", "make_worker_app"]

"""Celery task bodies: each takes a job id, checks the job table, does the work and records the result.

What lives here:

- ``optimize_job``: ``modelpress.optimize``, the task body that loads a job row, runs the optimize call
  (``modelpress.optimize.optimize_model``), records the result and decides what is retried;
- ``registry``: ``make_worker_app``, the worker's app (``workers.app.make_app``) with every task module's
  ``register(app)`` called on it: ``optimize_job`` here, and the task modules ``modelpress.reconcile``
  and ``modelpress.nightly``.

What it may import (direction: ``tasks`` → ``workers``, never back): ``modelpress.workers`` (routing
names and message options, the worker's identity, ``workers.job_request``'s task base class and memory
guard; ``workers.app`` in ``registry`` only), ``models_db``, ``settings``, ``errors``, ``worker_store``,
``intake``, the task modules ``reconcile`` and ``nightly`` (``registry``), and ``modelpress.optimize``
through its package-level names only. No module of ``modelpress.workers`` imports this package, not
even inside a function, so there is no import circle between the two. Torch is imported only inside the
task body, in the worker child; importing this package imports Celery but never torch.
"""

"""Queues and routing: one queue per quantized backend, each on its own direct exchange.

A job is routed by its *target* backend (the engine its artifact is for), not by who submits it.
``Queue(name)`` without an exchange would bind every queue to the default exchange (field notes), so
each queue gets ``Exchange(name)`` and ``routing_key=name`` explicitly.

Example:
    >>> route_for("qnnpack")["routing_key"]
    'qnnpack'
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from modelpress.settings import BACKENDS, Settings

OPTIMIZE_TASK = "modelpress.optimize"


class UnknownBackendError(ValueError):
    """A backend/queue name that no worker consumes."""


def task_queues() -> list[Queue]:
    return [Queue(b, Exchange(b, type="direct"), routing_key=b) for b in BACKENDS]


def route_for(backend: str) -> dict[str, str]:
    """``apply_async``/``send_task`` options that deliver to ``backend``'s queue only."""
    if backend not in BACKENDS:
        raise UnknownBackendError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    return {"queue": backend, "exchange": backend, "routing_key": backend}


# Task names: senders (producer, beat, reconciler) address tasks by name, so no module that publishes
# has to import the module that defines the task (no import circles through the Celery app).
RECONCILE_TASK = "modelpress.reconcile"
NIGHTLY_TASK = "modelpress.nightly"
OPS_QUEUE = "ops"


def ops_queue() -> Queue:
    """The queue of light bookkeeping tasks (nightly submission, reconciler): its own direct exchange.

    Example:
        >>> ops_queue().routing_key
        'ops'
    """
    return Queue(OPS_QUEUE, Exchange(OPS_QUEUE, type="direct"), routing_key=OPS_QUEUE)


def ops_route() -> dict[str, str]:
    """``send_task`` options that deliver to the ``ops`` queue.

    Example:
        >>> ops_route()["queue"]
        'ops'
    """
    return {"queue": OPS_QUEUE, "exchange": OPS_QUEUE, "routing_key": OPS_QUEUE}


def job_display_name(model: str, recipe: str, backend: str) -> str:
    """What Flower shows for a job's task (Celery's ``shadow`` name): model, recipe and backend.

    Example:
        >>> job_display_name("mlp", "dynamic-int8", "fbgemm")
        'mlp dynamic-int8 fbgemm'
    """
    # Bounded: a model name may be a 300-character module path; Flower's table needs a glance's worth.
    return " ".join((model[-120:], recipe[:80], backend))


def job_message_options(settings: Settings, *, backend: str, time_limit_s: int | None,
                        model: str | None = None, recipe: str | None = None) -> dict[str, Any]:
    """``send_task`` options for one job's message: its backend's queue, its own time limits and, given
    ``model`` and ``recipe``, the display name Flower shows (``shadow``).

    A job with ``time_limit_s`` (from its recipe) gets that soft limit and a hard kill
    ``job_hard_limit_grace`` later, never beyond the deployment's hard limit (the Redis visibility
    timeout is sized for that one).

    Example:
        >>> from modelpress.settings import Settings
        >>> s = Settings(home="/tmp/mp-doc", job_hard_limit_grace=5)
        >>> opts = job_message_options(s, backend="fbgemm", time_limit_s=20, model="mlp", recipe="r")
        >>> opts["queue"], opts["soft_time_limit"], opts["time_limit"], opts["shadow"]
        ('fbgemm', 20, 25, 'mlp r fbgemm')
    """
    opts: dict[str, Any] = dict(route_for(backend))
    if time_limit_s:
        hard = min(time_limit_s + settings.job_hard_limit_grace, settings.task_time_limit)
        opts["soft_time_limit"] = min(time_limit_s, hard - 1)
        opts["time_limit"] = hard
    if model is not None and recipe is not None:
        opts["shadow"] = job_display_name(model, recipe, backend)
    return opts

"""Queues and routing: one queue per quantized backend, each on its own direct exchange.

A job is routed by its *target* backend (the engine its artifact is for), not by who submits it.
``Queue(name)`` without an exchange would bind every queue to the default exchange (field notes), so
each queue gets ``Exchange(name)`` and ``routing_key=name`` explicitly.

Example:
    >>> route_for("qnnpack")["routing_key"]
    'qnnpack'
"""

from __future__ import annotations

from kombu import Exchange, Queue

from modelpress.settings import BACKENDS

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

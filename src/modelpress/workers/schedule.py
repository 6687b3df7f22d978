"""Celery's ``beat_schedule`` from ``Settings``: what beat sends, and when (see ``workers.beat``).

Kept apart from the scheduler itself so the Celery app can carry the schedule without importing beat.

Example:
    >>> from modelpress.settings import Settings
    >>> sorted(beat_schedule(Settings(home="/tmp/mp-doc")))
    ['nightly-recompression', 'reconcile']
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.schedules import crontab

from modelpress.settings import Settings
from modelpress.workers.routing import NIGHTLY_TASK, RECONCILE_TASK


def parse_schedule(text: str) -> crontab | timedelta | None:
    """``"0 2 * * *"`` → a crontab (UTC: the app's timezone); ``"30"`` → every 30 s; ``""`` → None (off).

    Example:
        >>> parse_schedule("0 2 * * *").hour
        {2}
        >>> parse_schedule("5")
        datetime.timedelta(seconds=5)
    """
    text = text.strip()
    if not text:
        return None
    try:
        return timedelta(seconds=float(text))
    except ValueError:
        return crontab.from_string(text)


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Celery's ``beat_schedule`` for ``settings``.

    Example:
        >>> beat_schedule(Settings(home="/tmp/mp-doc"))["reconcile"]["task"]
        'modelpress.reconcile'
    """
    entries: dict[str, dict[str, Any]] = {}
    nightly = parse_schedule(settings.nightly_schedule)
    if nightly is not None:
        # expires: a night's message that waited hours (no ops worker) would be filed under the wrong date.
        entries["nightly-recompression"] = {"task": NIGHTLY_TASK, "schedule": nightly, "options": {"expires": 3600}}
    # expires: reconciler runs that could not be delivered in time are dropped, not run back to back.
    entries["reconcile"] = {"task": RECONCILE_TASK, "schedule": timedelta(seconds=settings.reconcile_interval),
                            "options": {"expires": settings.reconcile_interval}}
    return entries

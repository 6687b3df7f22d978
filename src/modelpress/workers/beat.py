"""The beat schedule (from ``Settings``) and the one-scheduler-at-a-time lease.

Two entries, routed by the app's ``task_routes``:

- ``nightly-recompression`` → ``modelpress.nightly`` on ``MODELPRESS_NIGHTLY_SCHEDULE`` (crontab, UTC),
  to the ``ops`` queue that ``modelpress ops-worker`` consumes: never behind a backlog of optimize jobs;
- ``reconcile`` → ``modelpress.reconcile`` every ``MODELPRESS_RECONCILE_INTERVAL`` seconds, sent by
  name; routed to ``ops`` too unless ``MODELPRESS_RECONCILE_QUEUE`` names a backend queue.

``LeasedScheduler`` sends nothing unless this process holds the ``beat`` row of the ``locks`` table: a
lease taken with one conditional UPDATE/INSERT, renewed every third of ``MODELPRESS_BEAT_LEASE_SECONDS``
and released on shutdown. A second ``modelpress beat`` waits as a standby and takes over when the
lease is released or expires. The schedule file (``$MODELPRESS_HOME/beat-schedule``) is opened only
by the holder, so two beats sharing a home never write it together.

Example:
    >>> from modelpress.settings import Settings
    >>> sorted(beat_schedule(Settings(home="/tmp/mp-doc")))
    ['nightly-recompression', 'reconcile']
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from celery.beat import PersistentScheduler

from modelpress.settings import Settings
from modelpress.workers.routing import NIGHTLY_TASK, OPS_QUEUE, RECONCILE_TASK, ops_queue, ops_route  # noqa: F401
from modelpress.workers.schedule import beat_schedule, parse_schedule  # noqa: F401 - this module's public names

log = logging.getLogger(__name__)

LEASE_NAME = "beat"


def schedule_filename(settings: Settings) -> Path:
    """Where beat keeps each entry's last run: an absolute path under ``MODELPRESS_HOME``.

    Example:
        >>> str(schedule_filename(Settings(home="/tmp/mp-doc")))
        '/tmp/mp-doc/beat-schedule'
    """
    return settings.home / "beat-schedule"


class LeasedScheduler(PersistentScheduler):
    """A ``PersistentScheduler`` that schedules only while it holds the ``beat`` lease."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        app = kwargs.get("app") or args[0]
        self.settings: Settings = app.modelpress_settings
        self.holder = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.lease_seconds = self.settings.beat_lease_seconds
        self.renew_every = self.lease_seconds / 3
        self._leader = False
        self._said_standby = False
        self._next_check = 0.0
        self._sessionmaker: Any = None
        super().__init__(*args, **kwargs)

    # --- the lease -----------------------------------------------------------------------------
    def _sessions(self) -> Any:
        if self._sessionmaker is None:
            from modelpress.models_db import make_engine, make_sessionmaker

            # With the timeouts: a hung database makes a renewal fail (and the beat stand down), not hang.
            # Each statement bounded by a third of the lease too: a renewal that waits longer than that
            # could not prove the lease anyway.
            opts = self.settings.db_engine_options()
            for k in ("statement_timeout_s", "lock_timeout_s"):
                opts[k] = min(opts[k] or self.lease_seconds / 3, self.lease_seconds / 3)
            self._sessionmaker = make_sessionmaker(make_engine(self.settings.effective_database_url, **opts))
        return self._sessionmaker

    def _hold_lease(self) -> bool:
        from modelpress.models_db.jobs import acquire_lease

        try:
            with self._sessions()() as s:
                return acquire_lease(session=s, name=LEASE_NAME, holder=self.holder, ttl_s=self.lease_seconds)
        except Exception:  # noqa: BLE001 - cannot prove we hold it: behave as if we do not
            log.warning("beat: could not reach the database to renew the scheduler lease", exc_info=True)
            return False

    def _become_leader(self) -> None:
        log.info("beat: %s took the scheduler lease; scheduling (schedule file %s)",
                 self.holder, self.schedule_filename)
        PersistentScheduler.setup_schedule(self)
        self._heap = None
        self._leader = True
        self._said_standby = False

    def _stand_down(self) -> None:
        log.warning("beat: %s lost the scheduler lease; standing by", self.holder)
        self._close_store()
        self._leader = False
        self._said_standby = True

    def _close_store(self) -> None:
        if self._store is not None:
            try:
                self._store.sync()
                self._store.close()
            finally:
                self._store = None
                self._heap = None
                self.old_schedulers = None

    # --- Scheduler hooks -----------------------------------------------------------------------
    def setup_schedule(self) -> None:
        # Deferred to _become_leader: only the lease holder may open the shared schedule file.
        log.info("beat: %s started; scheduling only while it holds the lease (%g s, renewed every %g s)",
                 self.holder, self.lease_seconds, self.renew_every)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.renew_every
            held = self._hold_lease()
            if held and not self._leader:
                self._become_leader()
            elif not held and self._leader:
                self._stand_down()
            elif not held and not self._said_standby:
                log.info("beat: %s is a standby: another beat has the lease", self.holder)
                self._said_standby = True
        until_check = max(0.0, self._next_check - time.monotonic())
        if not self._leader:
            return max(0.1, until_check)
        return min(super().tick(*args, **kwargs), until_check)

    def close(self) -> None:
        try:
            super().close()  # syncs and closes the schedule file if this process opened it
        finally:
            self._store = None
            if self._leader:
                self._leader = False
                self._release()

    def _release(self) -> None:
        from modelpress.models_db.jobs import release_lease

        try:
            with self._sessions()() as s:
                release_lease(session=s, name=LEASE_NAME, holder=self.holder)
            log.info("beat: %s released the scheduler lease", self.holder)
        except Exception:  # noqa: BLE001 - it expires by itself after MODELPRESS_BEAT_LEASE_SECONDS
            log.warning("beat: could not release the scheduler lease; it expires in %g s", self.lease_seconds)

    @property
    def info(self) -> str:
        return f"    . db -> {self.schedule_filename}\n    . lease -> locks.{LEASE_NAME}, {self.lease_seconds:g} s"


def run_beat(settings: Settings, *, loglevel: str = "INFO") -> None:
    """Run Celery beat for ``settings`` with the leased scheduler (blocks until stopped).

    Example:
        >>> run_beat(Settings())  # doctest: +SKIP
    """
    from modelpress.workers.app import make_app

    settings.home.mkdir(parents=True, exist_ok=True)
    app = make_app(settings)
    app.Beat(app=app, scheduler=LeasedScheduler, schedule=str(schedule_filename(settings)),
             loglevel=loglevel, max_interval=min(300.0, settings.beat_lease_seconds / 3)).run()

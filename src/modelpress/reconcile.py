"""The reconciler: the job table re-creates what the broker lost, and ends what can never finish.

The SQL job table is the record of truth; broker messages are only hints that a job should run now
(field notes: a Redis restart without persistence loses every queued message; a killed whole worker
holds its unacked message for ``visibility_timeout``; the filesystem broker loses it for good). One
pass, ``reconcile_once``, does three things, each a conditional UPDATE so that any number of
reconcilers (every worker at start, beat, the CLI) may run at once:

1. **Poison**: a job that used up ``max_attempts`` claims — queued, or running with a stale
   heartbeat — is failed with the reason. The rest of the batch goes on.
2. **Lost workers**: a running job whose heartbeat is older than ``heartbeat_stale_after`` goes back
   to ``queued`` and its message is published again.
3. **Lost messages**: a queued job last published more than ``reconcile_queued_grace`` ago whose
   message neither waits in the broker's queue (looked up on Redis and the filesystem broker) nor is
   held by a worker (delivered within the grace period by Redis's own clock, or reserved/active on a
   live worker, asked with ``inspect``) is published again and stamped (``heartbeat_at`` on a queued row = last published at), so a long backlog is
   not flooded with copies. A copy that does get through is harmless: the claim lets one run it.

It runs as the Celery task ``modelpress.reconcile`` (beat schedules it by name), in each worker's
parent when the worker is ready (no torch there), and as ``modelpress reconcile``.

Example:
    >>> from modelpress.settings import Settings
    >>> summary = reconcile_once(Settings(home="/tmp/mp-doc"))  # doctest: +SKIP
    >>> summary.to_dict()["republished"]  # doctest: +SKIP
    []
"""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator

from modelpress.models_db import fail_job, make_engine, make_sessionmaker
from modelpress.models_db.jobs import (
    fail_exhausted_job,
    mark_republished,
    queued_jobs_published_before,
    requeue_stale_job,
    stale_running_jobs,
)
from modelpress.models_db.schema import Job, JobStatus
from modelpress.settings import BACKENDS, Settings
from modelpress.workers.routing import OPTIMIZE_TASK, RECONCILE_TASK, UnknownBackendError, job_message_options

log = logging.getLogger(__name__)

# Bound the work of one pass; the next pass takes the rest.
BATCH_LIMIT = 1000
# Ready messages looked at per queue before giving up on the broker look-up (then: grace period only).
MAX_SCANNED_MESSAGES = 200_000


@dataclass
class ReconcileSummary:
    """What one pass did, by job id.

    Example:
        >>> ReconcileSummary(republished=["ab12"]).total
        1
    """

    requeued_stale: list[str] = field(default_factory=list)   # running, worker lost → queued + published
    republished: list[str] = field(default_factory=list)      # queued, message lost → published again
    failed_poison: list[str] = field(default_factory=list)    # attempts used up → failed
    failed_unroutable: list[str] = field(default_factory=list)  # backend with no queue → failed
    still_in_broker: int = 0       # queued past the grace period, but their message is still waiting
    held_by_worker: int = 0        # queued past the grace period, but a worker holds their message (not claimed yet)
    broker_checked: bool = False   # False: the broker's queues could not be read; grace period only
    broker_reachable: bool = True  # False: nothing was published this pass (rows left for the next)

    @property
    def total(self) -> int:
        return len(self.requeued_stale) + len(self.republished) + len(self.failed_poison) + len(self.failed_unroutable)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"requeued {len(self.requeued_stale)} job(s) of lost workers, re-published {len(self.republished)} "
                f"lost message(s), failed {len(self.failed_poison)} poison and {len(self.failed_unroutable)} "
                f"unroutable job(s); {self.still_in_broker} queued job(s) still have their message"
                f" and {self.held_by_worker} are held by a worker"
                + ("" if self.broker_reachable else "; the broker was unreachable, nothing was published"))


def _naive_utc(dt: datetime | None) -> datetime | None:
    # SQLite gives naive datetimes for timezone=True columns; they are UTC.
    return dt.replace(tzinfo=None) if dt is not None and dt.tzinfo else dt


def _poison_reason(job: Job) -> str:
    if job.status == JobStatus.running.value:
        why = ("the process running it was lost each time (killed, out of memory, or crashed in native code)")
    else:
        why = "it could not be completed"
    return f"gave up after {job.attempts} attempts: {why}; last error: {job.error or 'none recorded'}"


# ----------------------------------------------------------------------------- broker look-up
def _job_id_of(raw: bytes | str) -> str | None:
    """The job id carried by one serialized optimize message, or None if it is not one."""
    try:
        msg = json.loads(raw)
        if msg.get("headers", {}).get("task") != OPTIMIZE_TASK:
            return None
        body = msg["body"]
        if msg.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _redis_messages(settings: Settings, queues: Iterable[str]) -> Iterator[bytes]:
    import redis
    from kombu.transport.redis import PRIORITY_STEPS, Channel

    client = redis.Redis.from_url(settings.effective_broker_url, socket_connect_timeout=5, socket_timeout=30)
    try:
        for q in queues:
            # kombu keeps one list per priority step: "q", "q\x06\x163", ... (prefixed by global_keyprefix).
            for pri in PRIORITY_STEPS:
                key = settings.queue_prefix + (f"{q}{Channel.sep}{pri}" if pri else q)
                start, page = 0, 500
                while start < MAX_SCANNED_MESSAGES:
                    items = client.lrange(key, start, start + page - 1)
                    yield from items
                    if len(items) < page:
                        break
                    start += page
                else:
                    raise OverflowError(f"more than {MAX_SCANNED_MESSAGES} messages in {key!r}")
    finally:
        client.close()


def _filesystem_messages(settings: Settings) -> Iterator[bytes]:
    folder = Path(settings.broker_folders()["data_folder_in"])
    for i, path in enumerate(folder.glob("*.msg")):
        if i >= MAX_SCANNED_MESSAGES:
            raise OverflowError(f"more than {MAX_SCANNED_MESSAGES} messages in {folder}")
        try:
            yield path.read_bytes()
        except FileNotFoundError:  # consumed while we looked
            continue


def broker_job_ids(settings: Settings, queues: Iterable[str] = BACKENDS) -> set[str] | None:
    """Ids of the jobs whose optimize message is waiting (ready, not yet delivered) in the broker.

    None when the broker cannot be read this way (another transport, too many messages, an error):
    the caller then relies on the grace period alone. Delivered-but-unacknowledged messages are not
    counted: if their worker died, the job needs a new message.

    Example:
        >>> broker_job_ids(Settings(home="/tmp/mp-doc", broker_url="redis://127.0.0.1:6379/0"))  # doctest: +SKIP
        set()
    """
    url = settings.effective_broker_url
    try:
        if url.startswith(("redis://", "rediss://")):
            raws: Iterable[bytes] = _redis_messages(settings, queues)
        elif settings.is_embedded_broker:
            raws = _filesystem_messages(settings)
        else:
            return None
        return {j for j in (_job_id_of(r) for r in raws) if j}
    except Exception as e:  # noqa: BLE001 - a failed look-up must not stop the pass; the grace period still bounds it
        log.warning("reconcile: could not read the broker's queues (%s: %s); using the grace period alone",
                    type(e).__name__, e)
        return None


def _job_ids_of_task_dicts(replies: dict[str, Any] | None) -> set[str]:
    """Job ids in ``inspect().reserved()``/``active()`` replies: ``{node: [{"name", "args", ...}]}``."""
    import ast

    out: set[str] = set()
    for tasks in (replies or {}).values():
        for t in tasks or []:
            if (t.get("type") or t.get("name")) != OPTIMIZE_TASK:  # "name" is the shadow display name
                continue
            args = t.get("args")
            if isinstance(args, str):  # older workers send repr() of the arguments
                try:
                    args = ast.literal_eval(args)
                except (ValueError, SyntaxError):
                    continue
            if isinstance(args, (list, tuple)) and args:
                out.add(str(args[0]))
    return out


def _this_workers_job_ids() -> set[str]:
    """Job ids of the optimize requests this process holds as a worker's parent (reserved or active):
    Celery's own bookkeeping, read in-process (empty outside a worker)."""
    from celery.worker import state

    out: set[str] = set()
    for req in list(state.reserved_requests) + list(state.active_requests):
        try:
            # ``type`` is the task run; ``name``/``task_name`` is the display name (shadow).
            if getattr(req, "type", None) == OPTIMIZE_TASK and req.args:
                out.add(str(req.args[0]))
        except Exception:  # noqa: BLE001 - a request being torn down while we look
            continue
    return out


def worker_held_job_ids(settings: Settings, app: Any, *, timeout: float = 1.0, ask_workers: bool = True) -> set[str]:
    """Ids of jobs whose optimize message a worker holds now, though it may not have claimed the job yet.

    Two sources, because a worker takes a message off the queue list some time before it claims the
    job: (1) Redis's unacknowledged set, entries delivered less than ``reconcile_queued_grace`` ago by
    Redis's clock (``TIME``), so a whole worker killed long ago does not keep its job hostage for the
    visibility timeout; (2) the reserved and active tasks of this process, when it is a worker's parent
    (Celery's own bookkeeping), and of every live worker (``inspect``; not with ``ask_workers=False``). Each
    source that cannot be read is skipped (logged): the grace period still bounds the harm, a duplicate
    message, which the claim makes harmless.

    Example:
        >>> worker_held_job_ids(Settings(home="/tmp/mp-doc", broker_url="redis://127.0.0.1:6379/0"), app)  # doctest: +SKIP
        set()
    """
    url = settings.effective_broker_url
    if not url.startswith(("redis://", "rediss://")):
        return set()
    held: set[str] = set()
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)
        try:
            now_s, now_us = client.time()
            since = now_s + now_us / 1e6 - settings.reconcile_queued_grace
            p = settings.queue_prefix
            tags = client.zrangebyscore(f"{p}unacked_index", since, "+inf")
            for raw in (client.hmget(f"{p}unacked", tags) if tags else []):
                if raw is None:
                    continue  # acknowledged while we looked
                try:
                    job_id = _job_id_of(json.dumps(json.loads(raw)[0]))
                except (ValueError, IndexError, TypeError):
                    continue
                if job_id:
                    held.add(job_id)
        finally:
            client.close()
    except Exception as e:  # noqa: BLE001 - one source fewer; the grace period still bounds the harm
        log.warning("reconcile: could not read the broker's delivered messages (%s: %s)", type(e).__name__, e)
    held |= _this_workers_job_ids()
    if not ask_workers:
        return held
    try:
        inspector = app.control.inspect(timeout=timeout)
        held |= _job_ids_of_task_dicts(inspector.reserved()) | _job_ids_of_task_dicts(inspector.active())
    except Exception as e:  # noqa: BLE001 - as above
        log.warning("reconcile: could not ask the workers what they hold (%s: %s)", type(e).__name__, e)
    return held


def _broker_reachable(app: Any) -> bool:
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.5, timeout=5)
        return True
    except Exception as e:  # noqa: BLE001 - any failure means "do not publish now"
        log.warning("reconcile: broker unreachable (%s: %s); no messages will be published this pass",
                    type(e).__name__, e)
        return False


# ----------------------------------------------------------------------------- the pass
def reconcile_once(settings: Settings, *, app: Any = None, ask_workers: bool = True) -> ReconcileSummary:
    """One reconciliation pass over the job table; safe to run anywhere, any number of times at once.

    Example:
        >>> s = reconcile_once(Settings(home="/tmp/mp-doc"))  # doctest: +SKIP
        >>> print(s)  # doctest: +SKIP
        requeued 0 job(s) of lost workers, re-published 0 lost message(s), failed 0 poison ...
    """
    own_app = app is None
    if own_app:
        from modelpress.workers.app import make_app  # a publisher only: messages go out by task name

        app = make_app(settings)
    # Seconds, not datetimes: every cutoff is computed in SQL with the database's clock, so a host
    # whose clock runs ahead does not see live heartbeats as stale.
    stale_s, grace_s = settings.heartbeat_stale_after, settings.reconcile_queued_grace
    summary = ReconcileSummary()
    engine = make_engine(settings.effective_database_url, **settings.db_engine_options())
    sessions = make_sessionmaker(engine)

    def publish(s: Any, job: Job) -> bool:
        try:
            opts = job_message_options(settings, backend=job.backend, time_limit_s=job.time_limit_s,
                                       model=job.model_name, recipe=job.recipe_name)
        except UnknownBackendError as e:
            if fail_job(session=s, job_id=job.id, error=f"cannot be run: {e}"):
                summary.failed_unroutable.append(job.id)
            return False
        app.send_task(OPTIMIZE_TASK, args=[job.id], **opts)
        return True

    try:
        with sessions() as s:
            stale = list(stale_running_jobs(session=s, stale_after_s=stale_s, limit=BATCH_LIMIT))
            waiting = list(queued_jobs_published_before(session=s, grace_s=grace_s, limit=BATCH_LIMIT))

            # 1. Poison: used up its attempts. Failing it needs no broker.
            for job in [j for j in stale + waiting if j.attempts >= settings.max_attempts]:
                if fail_exhausted_job(session=s, job_id=job.id, max_attempts=settings.max_attempts,
                                      stale_after_s=stale_s, error=_poison_reason(job)):
                    summary.failed_poison.append(job.id)
                    log.warning("reconcile: job %s failed for good: %s", job.id, _poison_reason(job))
            poisoned = set(summary.failed_poison)
            stale = [j for j in stale if j.id not in poisoned and j.attempts < settings.max_attempts]
            waiting = [j for j in waiting if j.id not in poisoned and j.attempts < settings.max_attempts]
            if not stale and not waiting:
                return summary

            summary.broker_reachable = _broker_reachable(app)
            if not summary.broker_reachable:
                return summary

            # 2. Lost workers: requeue, then publish (row first, message second, as the producer does).
            for job in stale:
                last = _naive_utc(job.heartbeat_at)
                if requeue_stale_job(session=s, job_id=job.id, stale_after_s=stale_s,
                                     error=f"requeued by the reconciler: no heartbeat from {job.worker_host or '?'} "
                                           f"since {last.isoformat(timespec='seconds') if last else 'the claim'} "
                                           f"(attempt {job.attempts} of {settings.max_attempts})"):
                    if publish(s, job):
                        summary.requeued_stale.append(job.id)

            # 3. Lost messages: only jobs whose message is not waiting in the broker.
            present = broker_job_ids(settings) if waiting else set()
            summary.broker_checked = present is not None
            held = worker_held_job_ids(settings, app, ask_workers=ask_workers) if waiting else set()
            for job in waiting:
                if present is not None and job.id in present:
                    summary.still_in_broker += 1
                    continue
                if job.id in held:
                    summary.held_by_worker += 1
                    continue
                if mark_republished(session=s, job_id=job.id, grace_s=grace_s):
                    if publish(s, job):
                        summary.republished.append(job.id)
    finally:
        engine.dispose()
        if own_app:
            app.close()
    if summary.total:
        log.info("reconcile: %s", summary)
    return summary


def register(app: Any) -> None:
    """Register ``modelpress.reconcile`` on ``app`` (beat schedules it by this name).

    Example:
        >>> from modelpress.workers.app import make_app  # doctest: +SKIP
        >>> make_app(settings).send_task("modelpress.reconcile")  # doctest: +SKIP
    """

    # Not acks_late: a lost reconcile message costs nothing, the next one does the same work.
    @app.task(name=RECONCILE_TASK, bind=True, acks_late=False, ignore_result=True)
    def reconcile(self: Any) -> dict[str, Any]:
        return reconcile_once(self.app.modelpress_settings, app=self.app).to_dict()


def reconcile_at_worker_start(app: Any) -> None:
    """Run the reconciler in a worker's parent process, in a thread, twice: now, and once the heartbeats
    of jobs that were running on a worker that just died have had time to go stale.

    Example:
        >>> reconcile_at_worker_start(app)  # doctest: +SKIP
    """
    import threading
    import time

    settings: Settings = app.modelpress_settings

    def run() -> None:
        for delay in (0.0, settings.heartbeat_stale_after + 2 * settings.heartbeat_interval):
            time.sleep(delay)
            try:
                # No ``inspect`` broadcast from a worker's parent: seen here, a parent that had run one
                # forked pool children that never came up ("Timed out waiting for UP message"). This
                # worker's own reserved/active requests and Redis's recent deliveries cover it.
                summary = reconcile_once(settings, app=app, ask_workers=False)
                log.info("reconcile at worker start (pid %d): %s", os.getpid(), summary)
            except Exception:  # noqa: BLE001 - beat and the next worker start try again
                log.warning("reconcile at worker start failed", exc_info=True)

    threading.Thread(target=run, name="modelpress-reconcile", daemon=True).start()

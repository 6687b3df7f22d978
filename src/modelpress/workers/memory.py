"""The per-job memory ceiling in a worker child (issue 20; docs/faults.md, "Memory ceiling").

Without it, one job whose model or data decodes to more memory than the host has gets its child killed by
the kernel, and acks-late + ``reject_on_worker_lost`` redeliver it: one memory bomb killed up to
``MODELPRESS_MAX_ATTEMPTS`` children, and with them every job those children held. With it:

1. **The kernel refuses the allocation.** While a job runs, the child's ``RLIMIT_DATA`` soft limit is what
   the child held at the job's start plus the ceiling (Linux ≥ 4.7 counts every private writable mapping:
   malloc, mmap'd tensors, thread stacks). An allocation past it fails with ``ENOMEM``: torch raises
   ``RuntimeError: DefaultCPUAllocator: can't allocate memory``, Python ``MemoryError``; ``explain`` turns
   either (wrapped or not) into ``MemoryCeilingError``, a user error: failed with the ceiling in the
   message, not retried, and the same child takes the next job. (``RLIMIT_AS`` would count address space
   that is only reserved, such as glibc's per-thread arenas, and is the wrong measure.)
2. **A watchdog measures what the limit does not count.** Shared memory (``mmap(-1, n)``, ``/dev/shm``,
   torch's shared tensors) is outside ``RLIMIT_DATA``. A thread reads the child's resident anonymous +
   shared memory every ``WATCH_INTERVAL_S`` (more often as it nears the ceiling); past the ceiling it stops
   the job the way Celery's soft time limit does (SIGUSR1) and writes the failure to the job's row; if the
   job has not stopped within ``STOP_GRACE_S`` it SIGKILLs its own process, once the failure is written:
   the redelivered message finds the job finished and does nothing.
3. **A child killed near its ceiling** (the kernel's OOM killer, native code that aborts when malloc
   fails) leaves a mark: a small file per child saying how close its job came, updated once the job
   passes ``NEAR_FRACTION`` of its ceiling (``near_mark``). The worker's parent reads it when Celery
   reports the child lost and fails the job with the reason instead of letting it be redelivered
   (``workers.job_request.JobRequest``). A child killed far below its ceiling (``kill -9`` by hand) is a
   lost worker as before: redelivered.

The module reads ``/proc`` and never imports torch or the database.

Example:
    >>> resolve_ceiling(None, concurrency=2, host_bytes=16 * 1024**3) == int(0.8 * 8 * 1024**3)
    True
    >>> resolve_ceiling(0, concurrency=2, host_bytes=16 * 1024**3)
    0
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Callable

from modelpress.errors import MemoryCeilingError

log = logging.getLogger(__name__)

LIMIT_VARIABLE = "MODELPRESS_JOB_MEMORY_LIMIT"
AUTO_FRACTION = 0.8  # of the host's memory, shared by the worker's children; the rest: parent, OS, page cache
NEAR_FRACTION = 0.9  # a child lost above this share of its ceiling is treated as out of memory
WATCH_INTERVAL_S = 0.1  # between samples while far from the ceiling
MIN_WATCH_INTERVAL_S = 0.005  # near it: a loop filling memory took 5 GB/s here, 0.5 GB per 0.1 s
STOP_GRACE_S = 3.0  # a stopped job that still runs after this (native code ignoring SIGUSR1) is killed
RECORD_RESERVE = 256 * 1024**2  # headroom granted while the watchdog writes the failure to the database

# What an allocation refused by RLIMIT_DATA looks like once it has been caught and re-raised by torch,
# numpy, onnxruntime, OpenVINO or our own "could not read ..." wrappers.
_ALLOCATION_FAILED = re.compile(
    r"can't allocate memory|cannot allocate memory|std::bad_alloc|\bbad_alloc\b|out of memory|"
    r"unable to allocate|failed to allocate|not enough memory|memoryerror", re.IGNORECASE)
_TRIED_BYTES = re.compile(r"tried to allocate (\d+) bytes|allocate (\d+) bytes", re.IGNORECASE)


def fmt_bytes(n: float) -> str:
    """``1610612736`` → ``'1.50 GiB'`` (powers of two, as ``MODELPRESS_JOB_MEMORY_LIMIT=1.5GiB`` reads).

    Example:
        >>> fmt_bytes(1.5 * 1024**3), fmt_bytes(300 * 1024**2)
        ('1.50 GiB', '300 MiB')
    """
    if n >= 1024**3:
        return f"{n / 1024**3:.2f} GiB"
    return f"{n / 1024**2:.0f} MiB"


def host_memory_bytes() -> int | None:
    """The memory this host gives the worker: ``MemTotal``, or the cgroup's limit when that is lower.

    Example:
        >>> (host_memory_bytes() or 1) > 0
        True
    """
    found: list[int] = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except OSError:
        pass
    # cgroup v2, then v1; "max" or a huge number means no limit.
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            found.append(int(text))
    return min(found) if found else None


def resolve_ceiling(configured: int | None, *, concurrency: int, host_bytes: int | None) -> int:
    """The ceiling in bytes: the configured value, or (unset) ``AUTO_FRACTION`` of the host's memory shared
    by the worker's ``concurrency`` children; 0 means no ceiling (also when the host's memory is unknown).

    Example:
        >>> resolve_ceiling(3 * 1024**3, concurrency=4, host_bytes=None) == 3 * 1024**3
        True
    """
    if configured is not None:
        return int(configured)
    if not host_bytes:
        return 0
    return int(AUTO_FRACTION * host_bytes / max(1, concurrency))


def describe_ceiling(configured: int | None, *, concurrency: int, host_bytes: int | None) -> str:
    """One line for the worker's log: the ceiling and where it came from.

    Example:
        >>> describe_ceiling(None, concurrency=2, host_bytes=16 * 1024**3)
        'job memory ceiling 6.40 GiB per job (unset MODELPRESS_JOB_MEMORY_LIMIT: 80% of 16.00 GiB host memory / 2 children)'
    """
    ceiling = resolve_ceiling(configured, concurrency=concurrency, host_bytes=host_bytes)
    if ceiling == 0:
        why = "MODELPRESS_JOB_MEMORY_LIMIT=0" if configured == 0 else "the host's memory is unknown"
        return f"job memory ceiling: none ({why})"
    if configured is not None:
        return f"job memory ceiling {fmt_bytes(ceiling)} per job (MODELPRESS_JOB_MEMORY_LIMIT)"
    return (f"job memory ceiling {fmt_bytes(ceiling)} per job (unset {LIMIT_VARIABLE}: {AUTO_FRACTION:.0%} of "
            f"{fmt_bytes(host_bytes or 0)} host memory / {concurrency} {'child' if concurrency == 1 else 'children'})")


@dataclass(frozen=True)
class MemoryUse:
    """The child's memory, from ``/proc/self/status``: ``data`` is what ``RLIMIT_DATA`` counts (VmData),
    ``resident`` the resident anonymous + shared memory (RssAnon + RssShmem) that only swap could free."""

    data: int
    resident: int


def read_memory_use(pid: int | str = "self", *, fd: int | None = None) -> MemoryUse | None:
    """This process's (or ``pid``'s) ``MemoryUse``; None where ``/proc`` has no such fields (not Linux).

    ``fd``, an open ``/proc/self/status``, makes it one ``pread``: the watchdog gives up the GIL once per
    sample instead of at each of open, read and close, and each time it does, a job that holds the GIL
    while it fills memory (a large copy) takes another stretch of it.

    Example:
        >>> read_memory_use().data > 0
        True
    """
    fields: dict[str, int] = {}
    try:
        if fd is not None:
            text = os.pread(fd, 16384, 0).decode("ascii", "replace")
        else:
            with open(f"/proc/{pid}/status") as f:
                text = f.read()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key in ("VmData", "RssAnon", "RssShmem"):
                fields[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        return None
    if "VmData" not in fields or "RssAnon" not in fields:
        return None
    return MemoryUse(data=fields["VmData"], resident=fields["RssAnon"] + fields.get("RssShmem", 0))


def allocation_failure(exc: BaseException) -> tuple[bool, int | None]:
    """Whether ``exc`` (or an exception it was raised from, or its message) is a refused allocation, and
    the refused size in bytes when the message says it.

    Example:
        >>> allocation_failure(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
        ...                                 "allocate 6442450944 bytes. Error code 12"))
        (True, 6442450944)
        >>> allocation_failure(ValueError("weights do not fit"))
        (False, None)
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    hit, size = False, None
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        text = str(e)
        if (isinstance(e, MemoryError) or (isinstance(e, OSError) and e.errno == errno.ENOMEM)
                or _ALLOCATION_FAILED.search(text)):
            hit = True
            m = _TRIED_BYTES.search(text)
            if m and size is None:
                size = int(m.group(1) or m.group(2))
        todo += [e.__cause__, e.__context__]
    return hit, size


def mark_path(marks_dir: str, child_pid: int, parent_pid: int | None = None) -> Path:
    """Where child ``child_pid`` of worker ``parent_pid`` (default: this process's parent) keeps its mark.

    Host and parent in the name: ``MODELPRESS_HOME`` may be shared, and pids repeat across hosts and restarts.

    Example:
        >>> mark_path("/m", 4242, 4000).name == f"{socket.gethostname()}-4000-4242.json"
        True
    """
    parent = os.getppid() if parent_pid is None else parent_pid
    return Path(marks_dir) / f"{socket.gethostname()}-{parent}-{child_pid}.json"


def prepare_marks_dir(path: Path) -> str | None:
    """Create the marks folder (0700) and remove marks this host's dead workers left (a SIGKILLed worker
    runs no clean-up); None, with a warning, if it cannot be made.

    Example:
        >>> prepare_marks_dir(Path("/tmp/mp-doc/memory-marks")) == "/tmp/mp-doc/memory-marks"
        True
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        host = socket.gethostname()
        for old in path.glob(f"{host}-*-*.json"):
            owner, parent, _ = old.name.rsplit("-", 2)
            if owner == host and parent.isdigit() and not _alive(int(parent)):
                old.unlink(missing_ok=True)
    except OSError:
        log.warning("no folder for memory marks at %s: a child killed near its job's memory ceiling will be "
                    "redelivered as a lost worker", path, exc_info=True)
        return None
    return str(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, not ours to judge
    return True


def near_mark(marks_dir: str | None, pid: int) -> dict | None:
    """The mark of this worker's child ``pid`` if its running job had passed ``NEAR_FRACTION`` of its
    ceiling, else None (no mark, or a job that stayed below: a child lost then is a lost worker, redelivered).

    Example:
        >>> near_mark("/nonexistent", 4242) is None
        True
    """
    if not marks_dir:
        return None
    try:
        mark = json.loads(mark_path(marks_dir, pid, os.getpid()).read_text())
        near = float(mark["used"]) >= NEAR_FRACTION * float(mark["ceiling"]) > 0
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return mark if near else None


def clear_mark(marks_dir: str | None, pid: int, parent_pid: int | None = None) -> None:
    """Remove child ``pid``'s mark (the parent, once it has read it; the child, when its job ends)."""
    if marks_dir:
        try:
            mark_path(marks_dir, pid, parent_pid).unlink()
        except OSError:
            pass


def lost_child_reason(mark: dict, status: str) -> str:
    """The job's error when its child died (``status``: ``'signal 9 (SIGKILL)'``) after ``mark``.

    Example:
        >>> lost_child_reason({"ceiling": 1.5 * 1024**3, "used": 1.4 * 1024**3}, "signal 9 (SIGKILL)")  # doctest: +ELLIPSIS
        'the worker process running this job was lost (signal 9 (SIGKILL)) when the job used 1.40 GiB, 93% of its memory ceiling of 1.50 GiB...'
    """
    ceiling, used = float(mark["ceiling"]), float(mark["used"])
    return (f"the worker process running this job was lost ({status}) when the job used {fmt_bytes(used)}, "
            f"{used / ceiling:.0%} of its memory ceiling of {fmt_bytes(ceiling)}: treated as out of memory and not "
            f"retried (each try would kill a worker process); use a smaller model or data, or raise {LIMIT_VARIABLE} "
            "on hosts with the memory")


def _ceiling_advice(ceiling: int) -> str:
    return (f"the per-job ceiling is {fmt_bytes(ceiling)} ({LIMIT_VARIABLE}; 0 turns it off); use a smaller model "
            "or data, or raise it on hosts with the memory")


class JobMemoryGuard:
    """Context manager around one job's run in a worker child: the ceiling while inside, nothing after.

    ``on_trip(reason)`` is called (in a thread of its own) when the watchdog finds the job's resident memory
    past the ceiling: it must write the failure to the job's row and return True if it did. The job is
    stopped first, not after the write: a database round trip is long enough for a page-faulting loop to
    take another gigabyte. ``wait_recorded`` tells the job's thread whether that write landed. ``explain(exc)`` sorts an exception
    raised by the job. ``ceiling`` 0 makes the guard do nothing.

    Example:
        >>> with JobMemoryGuard(0, job_id="j", task_id="t") as guard:
        ...     pass
        >>> guard.tripped.is_set()
        False
    """

    def __init__(self, ceiling: int, *, job_id: str, task_id: str | None, marks_dir: str | None = None,
                 on_trip: Callable[[str], bool] | None = None, interval: float = WATCH_INTERVAL_S,
                 grace: float = STOP_GRACE_S) -> None:
        self.ceiling, self.job_id, self.task_id, self.marks_dir = int(ceiling), job_id, task_id, marks_dir
        self.on_trip, self.interval, self.grace = on_trip, interval, grace
        self.tripped = threading.Event()
        self.reason: str | None = None
        self.peak = 0  # bytes above the start, the larger of data and resident, as the watchdog saw it
        self._start: MemoryUse | None = None
        self._saved: tuple[int, int] | None = None
        self._active = False  # between __enter__ and __exit__: only then may the limit be changed
        self._in_body = False
        self._stop = threading.Event()
        self._lock = threading.Lock()  # setrlimit from two threads (restore vs. the watchdog's reserve)
        self._thread: threading.Thread | None = None
        self._status_fd: int | None = None
        self._record_done = threading.Event()
        self._recorded = False
        self._mark_fd: int | None = None
        self._mark_used = 0  # the peak the mark file last recorded

    # ------------------------------------------------------------------ the limit
    def __enter__(self) -> "JobMemoryGuard":
        if self.ceiling <= 0:
            return self
        self._start = read_memory_use()
        if self._start is None:
            log.warning("job %s: no /proc/self/status here; the memory ceiling is not enforced", self.job_id[:8])
            return self
        self._status_fd = os.open("/proc/self/status", os.O_RDONLY)
        self._open_mark()
        self._write_mark()  # used 0: a child lost early in the job is a lost worker, redelivered
        self._active = True
        self._set_limit(self._start.data + self.ceiling)
        self._in_body = True
        self._thread = threading.Thread(target=self._watch, name="memory-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._in_body = False
        self._stop.set()
        self._restore()
        watching = False
        if self._thread is not None:
            self._thread.join(timeout=5)
            # A watchdog still alive (never seen) keeps its descriptors: closed under it, their numbers
            # could be reused by another file and written to.
            watching = self._thread.is_alive()
            if not watching and self._status_fd is not None:
                os.close(self._status_fd)
                self._status_fd = None
            # What sizing the ceiling needs (docs/operations.md): sampled, so a spike shorter than the
            # interval can be missed; a refused allocation never shows here (it was never granted).
            log.info("job %s: memory peak %s above the worker process's start (ceiling %s)", self.job_id[:8],
                     fmt_bytes(self.peak), fmt_bytes(self.ceiling))
        if self._mark_fd is not None and not watching:
            os.close(self._mark_fd)
            self._mark_fd = None
        clear_mark(self.marks_dir, os.getpid())

    def _set_limit(self, soft: int) -> None:
        import resource

        with self._lock:
            if not self._active:
                return  # the job is over: the limit is the child's own again
            try:
                cur_soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
                if self._saved is None:
                    self._saved = (cur_soft, hard)
                if hard != resource.RLIM_INFINITY:
                    soft = min(soft, hard)  # an unprivileged process cannot go above its hard limit
                resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
            except (ValueError, OSError) as e:
                log.warning("job %s: could not set RLIMIT_DATA (%s); only the watchdog enforces the ceiling",
                            self.job_id[:8], e)

    def _restore(self) -> None:
        import resource

        with self._lock:
            self._active = False
            if self._saved is not None:
                try:
                    resource.setrlimit(resource.RLIMIT_DATA, self._saved)
                except (ValueError, OSError):
                    log.warning("job %s: could not restore RLIMIT_DATA", self.job_id[:8], exc_info=True)
                self._saved = None

    # ------------------------------------------------------------------ sorting a job's exception
    def explain(self, exc: BaseException) -> MemoryCeilingError | None:
        """``MemoryCeilingError`` if ``exc`` comes from the ceiling (a refused allocation, or the watchdog's
        stop), else None: the caller handles ``exc`` as before.

        Example:
            >>> JobMemoryGuard(2**30, job_id="j", task_id="t").explain(MemoryError()).args[0]  # doctest: +ELLIPSIS
            'the job needed more memory than its ceiling allows: an allocation was refused...'
        """
        if self.tripped.is_set():
            return MemoryCeilingError(self.reason or "memory ceiling", recorded=True)
        if self.ceiling <= 0:
            return None
        hit, size = allocation_failure(exc)
        if not hit:
            return None
        what = f"an allocation of {fmt_bytes(size)} was refused" if size else "an allocation was refused"
        return MemoryCeilingError(f"the job needed more memory than its ceiling allows: {what} "
                                  f"({type(exc).__name__}); {_ceiling_advice(self.ceiling)}")

    def wait_recorded(self, timeout: float = 120.0) -> bool:
        """After a trip: wait for ``on_trip``'s write; True if it recorded the failure (else the caller does).

        Example:
            >>> JobMemoryGuard(0, job_id="j", task_id="t").wait_recorded(timeout=0)
            False
        """
        return self._record_done.wait(timeout) and self._recorded

    # ------------------------------------------------------------------ the watchdog thread
    def _watch(self) -> None:
        assert self._start is not None  # noqa: S101 - started only after the start was read
        tripped_at: float | None = None
        wait, last, last_at = self.interval, 0, time.monotonic()
        while not self._stop.wait(wait):
            use = read_memory_use(fd=self._status_fd)
            if use is None:
                continue
            resident = use.resident - self._start.resident
            # Next sample before the growth seen since the last one could reach the ceiling twice over.
            now = time.monotonic()
            rate = max(0, resident - last) / max(now - last_at, 1e-3)
            last, last_at = resident, now
            headroom = self.ceiling - resident
            wait = self.interval if rate <= 0 or headroom <= 0 else \
                min(self.interval, max(MIN_WATCH_INTERVAL_S, headroom / rate / 2))
            self.peak = max(self.peak, resident, use.data - self._start.data)
            if self.peak >= max(NEAR_FRACTION * self.ceiling, self._mark_used + 0.02 * self.ceiling):
                self._write_mark()  # first at 90 %, then each 2 % more: the parent's message says how far it got
            if tripped_at is None and resident > self.ceiling:
                tripped_at = time.monotonic()
                self._trip(resident)
            elif (tripped_at is not None and self._in_body and time.monotonic() - tripped_at > self.grace
                  and (self._record_done.is_set() or time.monotonic() - tripped_at > self.grace + 60)):
                # Killed only once its failure is in the row (or the database has had a minute): the
                # redelivered message then finds the job finished. Else the mark lets the parent write it.
                log.error("job %s: still running %.0f s after it was stopped for its memory (%s resident above "
                          "the start); killing this worker process", self.job_id[:8],
                          time.monotonic() - tripped_at, fmt_bytes(resident))
                os.kill(os.getpid(), signal.SIGKILL)

    def _open_mark(self) -> None:
        # Opened once per job, so that each update near the ceiling is one pwrite: every system call gives the
        # GIL back to a job that may be filling memory meanwhile.
        if not self.marks_dir:
            return
        try:
            self._mark_fd = os.open(mark_path(self.marks_dir, os.getpid()),
                                    os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError:
            log.warning("job %s: could not create its memory mark", self.job_id[:8], exc_info=True)

    def _write_mark(self) -> None:
        # Read by the worker's parent (near_mark) only if this process dies during the job; fixed width, so
        # a shorter update needs no truncate.
        self._mark_used = self.peak
        if self._mark_fd is None:
            return
        text = json.dumps({"job_id": self.job_id, "task_id": self.task_id, "ceiling": self.ceiling, "used": self.peak})
        try:
            os.pwrite(self._mark_fd, text.ljust(512).encode(), 0)
        except OSError:
            log.warning("job %s: could not write its memory mark", self.job_id[:8], exc_info=True)

    def _trip(self, resident: int) -> None:
        self.reason = (f"the job's resident memory (private and shared, above what its worker process held when the "
                       f"job started) passed its memory ceiling ({fmt_bytes(resident)} when it was stopped); "
                       f"{_ceiling_advice(self.ceiling)}")
        self.tripped.set()  # before the signal: the job's thread reads it to tell this stop from a time limit
        # Stop first, bookkeeping after: each write below gives the GIL back to a job that may be taking memory
        # as fast as the machine can (measured: ~0.9 GiB past a 1.5 GiB ceiling when the mark and the log
        # came first). SIGUSR1 is how billiard delivers Celery's soft time limit: every code path already
        # unwinds from it. Only where that handler is installed (elsewhere SIGUSR1 would kill the process).
        handler = signal.getsignal(signal.SIGUSR1)
        if callable(handler) and self._in_body:
            os.kill(os.getpid(), signal.SIGUSR1)
        self.peak = max(self.peak, resident)
        self._write_mark()  # if this process dies before the write below lands, the parent fails the job
        # The write needs a little memory, and the job may have used all of its allowance.
        use = read_memory_use(fd=self._status_fd)
        if use is not None:
            self._set_limit(use.data + RECORD_RESERVE)
        log.warning("job %s: %s; stopping it", self.job_id[:8], self.reason)
        threading.Thread(target=self._record, name="memory-record", daemon=True).start()

    def _record(self) -> None:
        try:
            if self.on_trip is not None:
                self._recorded = bool(self.on_trip(self.reason or ""))
        except Exception:  # noqa: BLE001 - the job's thread records it instead (wait_recorded is False)
            log.warning("job %s: could not record its memory failure", self.job_id[:8], exc_info=True)
        finally:
            self._record_done.set()

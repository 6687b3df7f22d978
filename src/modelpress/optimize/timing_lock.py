"""The host timing lock: one latency timing at a time among a service's workers, bounded, never hijackable.

Two jobs timing at once on one host slow each other (two children on 2 cores measured a 2.55× speed-up
that is 3.30× alone), so timing phases — only those, not whole jobs — queue behind one ``flock``.

Issue 20 item 7: the lock used to be a 0666 file in ``/tmp`` with an unbounded wait, so any local user
could hold it forever (every job hangs) or plant a symlink under its name. Now:

- it lives in a folder the service owns: ``MODELPRESS_TIMING_LOCK_DIR``, by default
  ``$MODELPRESS_HOME/timing-lock``, created 0750; a folder that is world-writable or owned by another
  user (root excepted) is refused (``UnsafeTimingLockDir``), and the worker refuses to start with one;
- the lock file is opened without following symlinks and made 0660 (the service's group may share it);
- the wait is bounded by ``MODELPRESS_TIMING_LOCK_TIMEOUT`` (seconds, default 300): past it,
  ``TimingLockTimeout`` — a ``TimeoutError``, which the optimize task treats as transient, so the job
  goes back to the queue and is retried with backoff instead of hanging the worker.

Torch-free (``measure`` re-exports ``host_timing_lock``): the worker's parent checks the folder at start
without importing torch. Settings are read by the caller; only the two variables above are read here,
for callers such as ``optimize_model`` that are given no settings (the worker validated them at start).

Example:
    >>> import tempfile
    >>> with host_timing_lock(tempfile.mkdtemp(), phase="doc", timeout=5) as rec:
    ...     pass
    >>> rec["phase"], rec["waited_s"] >= 0, rec["end"] >= rec["start"]
    ('doc', True, True)
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from pathlib import Path
from typing import Any, Iterator

from modelpress.filemodes import make_private_dirs

TIMING_LOCK_NAME = "modelpress-timing.lock"
LOCK_FILE_MODE = 0o660
DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_VARIABLE = "MODELPRESS_TIMING_LOCK_TIMEOUT"
DIR_VARIABLE = "MODELPRESS_TIMING_LOCK_DIR"


class TimingLockTimeout(TimeoutError):
    """The lock was held by others longer than the timeout. Transient: the job is retried with backoff."""


class UnsafeTimingLockDir(PermissionError):
    """A lock folder other users could write to or own: anyone there could hold or replace the lock."""


def default_timing_lock_dir() -> Path:
    """``MODELPRESS_TIMING_LOCK_DIR``, else ``$MODELPRESS_HOME/timing-lock`` (as ``Settings`` computes it).

    Every worker of a deployment shares its home, hence this one lock; deployments that must also queue
    behind each other on one host set the same ``MODELPRESS_TIMING_LOCK_DIR`` (a folder of their group).

    Example:
        >>> isinstance(default_timing_lock_dir(), Path)
        True
    """
    if os.environ.get(DIR_VARIABLE):
        return Path(os.environ[DIR_VARIABLE]).expanduser()
    home = os.environ.get("MODELPRESS_HOME")
    if not home:  # the same default as settings.default_home (optimize/ does not import settings)
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        home = os.path.join(base, "modelpress")
    return Path(home).expanduser().resolve() / "timing-lock"


def timing_lock_timeout() -> float:
    """``MODELPRESS_TIMING_LOCK_TIMEOUT`` in seconds (default 300); ``Settings`` validated it at start.

    Example:
        >>> timing_lock_timeout() > 0
        True
    """
    try:
        value = float(os.environ.get(TIMEOUT_VARIABLE) or DEFAULT_TIMEOUT_S)
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if value > 0 else DEFAULT_TIMEOUT_S


def prepare_lock_dir(lock_dir: str | os.PathLike[str] | None = None) -> Path:
    """Create the lock folder (0750) if missing, and refuse one other users can write to or own.

    Raises ``UnsafeTimingLockDir`` with one line saying what is wrong and what to set.

    Example:
        >>> import tempfile
        >>> prepare_lock_dir(tempfile.mkdtemp()).is_dir()
        True
        >>> prepare_lock_dir("/tmp")
        Traceback (most recent call last):
        ...
        modelpress.optimize.timing_lock.UnsafeTimingLockDir: timing lock folder /tmp is writable by every user ...
    """
    folder = Path(lock_dir).expanduser() if lock_dir is not None else default_timing_lock_dir()
    make_private_dirs(folder)
    st = os.stat(folder)
    fix = (f"set {DIR_VARIABLE} to a folder this service's user owns (by default $MODELPRESS_HOME/timing-lock, "
           "created 0750)")
    if st.st_mode & stat.S_IWOTH:  # sticky or not: anyone could create the lock file first and hold it
        raise UnsafeTimingLockDir(f"timing lock folder {folder} is writable by every user (mode "
                                  f"{stat.S_IMODE(st.st_mode):04o}), so anyone could hold or replace the lock; {fix}")
    if st.st_uid not in (os.geteuid(), 0):
        raise UnsafeTimingLockDir(f"timing lock folder {folder} is owned by uid {st.st_uid}, not by this service's "
                                  f"user (uid {os.geteuid()}), who could hold or replace the lock; {fix}")
    return folder


def _open_lock_file(path: Path) -> int:
    # O_NOFOLLOW: a symlink planted under the lock's name is refused, never followed to another file.
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, LOCK_FILE_MODE)
    except OSError as e:
        if os.path.islink(path):
            raise UnsafeTimingLockDir(f"timing lock {path} is a symbolic link, which is never followed; "
                                      "remove it") from None
        raise e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeTimingLockDir(f"timing lock {path} is not a regular file; remove it")
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != LOCK_FILE_MODE:
            os.fchmod(fd, LOCK_FILE_MODE)  # the umask filtered the mode given to open
    except BaseException:
        os.close(fd)
        raise
    return fd


def _acquire(fd: int, path: Path, timeout: float) -> float:
    """Take the lock within ``timeout`` seconds, polling (flock has no timeout); returns the wait."""
    import fcntl

    t0 = time.monotonic()
    delay = 0.01
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return time.monotonic() - t0
        except BlockingIOError:
            waited = time.monotonic() - t0
            if waited >= timeout:
                raise TimingLockTimeout(
                    f"waited {waited:.0f} s for the timing lock {path}, held all that time by another latency "
                    f"timing on this host; the job will be retried later (raise {TIMEOUT_VARIABLE}, now "
                    f"{timeout:g} s, if timings here are that long, or look for a stuck worker)") from None
            time.sleep(min(delay, timeout - waited))
            delay = min(delay * 2, 0.25)


def _load_avg() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except OSError:  # not available on this platform
        return None


@contextlib.contextmanager
def host_timing_lock(lock_dir: str | os.PathLike[str] | None = None, *, phase: str = "",
                     timeout: float | None = None) -> Iterator[dict[str, Any]]:
    """Hold the timing lock while latency is timed; yields the phase's record.

    ``lock_dir`` defaults to ``default_timing_lock_dir()``, ``timeout`` to ``MODELPRESS_TIMING_LOCK_TIMEOUT``.
    The record says how long the phase waited, when it ran (``start``/``end``, epoch seconds) and the
    host's 1-minute load average at its start and end: the load that remains is other work on the host,
    and it is in the row for anyone judging the numbers. Raises ``TimingLockTimeout`` past the timeout,
    ``UnsafeTimingLockDir`` for a folder others could write to.

    Example:
        >>> import tempfile
        >>> with host_timing_lock(tempfile.mkdtemp(), phase="doc") as rec:
        ...     pass
        >>> rec["lock_file"].endswith(TIMING_LOCK_NAME)
        True
    """
    import fcntl

    folder = prepare_lock_dir(lock_dir)
    path = folder / TIMING_LOCK_NAME
    fd = _open_lock_file(path)
    try:
        waited = _acquire(fd, path, timing_lock_timeout() if timeout is None else timeout)
        record: dict[str, Any] = {"phase": phase, "lock_file": str(path), "waited_s": waited,
                                  "load_avg_1m_start": _load_avg(), "start": time.time()}
        try:
            yield record
        finally:
            record["end"] = time.time()
            record["load_avg_1m_end"] = _load_avg()
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


__all__ = ["DEFAULT_TIMEOUT_S", "TIMING_LOCK_NAME", "TimingLockTimeout", "UnsafeTimingLockDir",
           "default_timing_lock_dir", "host_timing_lock", "prepare_lock_dir", "timing_lock_timeout"]

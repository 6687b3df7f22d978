"""What this host's CPU says about itself, read once from Linux's ``/proc/cpuinfo``.

One reader for every caller (the artifact key, the benchmarks' machine record): x86 lists its ISA
extensions on ``flags`` lines, aarch64 on ``Features`` lines, and a reader that knows only one of them
silently reports nothing on the other architecture.

Example:
    >>> isinstance(cpu_flags(), frozenset) and isinstance(cpu_model(), str)
    True
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def _lines() -> list[str]:
    try:
        return CPUINFO.read_text(encoding="ascii", errors="replace").splitlines()
    except OSError:  # not Linux, or /proc not mounted (some sandboxes): callers get "nothing known"
        return []


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """Every ISA flag the CPU reports (x86 ``flags`` and aarch64 ``Features``); empty when unreadable.

    Example:
        >>> "avx2" in cpu_flags() or platform.machine() != "x86_64" or not CPUINFO.exists()
        True
    """
    flags: set[str] = set()
    for line in _lines():
        if line.startswith(("flags", "Features")):
            flags |= set(line.split(":", 1)[-1].split())
    return frozenset(flags)


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    """The CPU's marketing name (x86 ``model name``), else what ``platform`` knows.

    Example:
        >>> bool(cpu_model())
        True
    """
    for line in _lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()

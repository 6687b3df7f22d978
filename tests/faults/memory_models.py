"""Test-only model factories that need more memory than a worker allows (allow-listed by the memory tests only).

Each one's weights step records ``<job id> <pid> start`` in the ledger (as ``tests.faults.models`` does), then
tries to take ``MP_MEM_BOMB_BYTES`` (default 6 GiB) — always *touching* the pages, so that if the ceiling did
not hold, the job would succeed and the test would fail instead of passing on untouched, overcommitted memory:

- ``one_tensor_spec``: one tensor of that size (``torch.ones``);
- ``many_tensors_spec``: 1 MiB tensors until that size, kept in a list;
- ``shared_memory_spec``: a shared anonymous mapping (``mmap(-1, n)``, which ``RLIMIT_DATA`` does not count),
  written 64 MiB at a time from Python, so the watchdog's stop (SIGUSR1) lands between two writes;
- ``stubborn_shared_memory_spec``: the same, but it swallows the stop and keeps holding the memory for a minute,
  as native code that never returns to Python would (the watchdog kills the process);
- ``killed_near_ceiling_spec``: private memory up to 95 % of ``MP_MEM_CEILING_BYTES`` (under the ceiling),
  held until the watchdog has seen it, then SIGKILL of its own process (the kernel's OOM killer, as a test can
  call it).

Example:
    $ MODELPRESS_FACTORY_ALLOWLIST=tests.faults.memory_models modelpress submit \
        --model tests.faults.memory_models:one_tensor_spec ...
"""

from __future__ import annotations

import mmap
import os
import signal
import time

import torch

from modelpress.optimize.spec import ModelSpec
from tests.faults.models import _spec as fault_spec
from tests.faults.models import record

MiB = 1024**2


def _bomb_bytes() -> int:
    return int(os.environ.get("MP_MEM_BOMB_BYTES", str(6 * 1024**3)))


def _spec(factory: str, behave) -> ModelSpec:  # type: ignore[no-untyped-def]
    # The fault models' spec, named after this module so that the memory tests' allow-list reaches it.
    return fault_spec(factory, behave, module=__name__)


def _one_tensor() -> None:
    big = torch.ones(_bomb_bytes() // 4)
    record(f"allocated {big.numel() * 4}")  # reached only if no ceiling held


def _many_tensors() -> None:
    kept = [torch.ones(MiB // 4) for _ in range(_bomb_bytes() // MiB)]
    record(f"allocated {len(kept) * MiB}")


def _fill_shared(swallow_stop: bool) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    area = mmap.mmap(-1, _bomb_bytes())  # MAP_SHARED | MAP_ANONYMOUS: shmem, outside RLIMIT_DATA
    chunk = b"\x01" * (64 * MiB)
    try:
        for offset in range(0, len(area), len(chunk)):
            area[offset:offset + len(chunk)] = chunk
        record(f"allocated {len(area)}")
    except SoftTimeLimitExceeded:
        if not swallow_stop:
            raise
        record("stop-ignored")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # holds the memory, as code stuck in C would
            try:
                time.sleep(0.2)
            except SoftTimeLimitExceeded:
                pass
    finally:
        area.close()


def _killed_near_ceiling() -> None:
    ceiling = int(os.environ["MP_MEM_CEILING_BYTES"])
    kept = [torch.ones(MiB // 4) for _ in range(int(0.95 * ceiling) // MiB)]  # 5 % under it
    record(f"holding {len(kept) * MiB}")
    time.sleep(1.5)  # the watchdog samples every 0.1 s
    os.kill(os.getpid(), signal.SIGKILL)


def one_tensor_spec() -> ModelSpec:
    return _spec("one_tensor_spec", _one_tensor)


def many_tensors_spec() -> ModelSpec:
    return _spec("many_tensors_spec", _many_tensors)


def shared_memory_spec() -> ModelSpec:
    return _spec("shared_memory_spec", lambda: _fill_shared(swallow_stop=False))


def stubborn_shared_memory_spec() -> ModelSpec:
    return _spec("stubborn_shared_memory_spec", lambda: _fill_shared(swallow_stop=True))


def killed_near_ceiling_spec() -> ModelSpec:
    return _spec("killed_near_ceiling_spec", _killed_near_ceiling)

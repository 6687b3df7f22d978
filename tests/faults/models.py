"""Test-only model factories for fault tests (allow-listed as ``tests.faults.models``; never in production).

Each factory gives a tiny model whose built-in weights step (``pretrained``, run once per execution of a
job) appends ``<job id> <pid> start`` to the ledger file named by ``MP_FAULT_LEDGER``, then behaves:

- ``quick_spec``: returns at once;
- ``slow_spec``: sleeps ``MP_FAULT_SLOW_S`` seconds (default 4), long enough to kill something mid-job;
- ``slow_to_trace_spec``: returns at once, but its forward sleeps ``MP_FAULT_TRACE_S`` s while FX traces it;
- ``sleepy_spec``: sleeps 120 s, interruptibly (the soft time limit stops it);
- ``stubborn_spec``: sleeps and swallows the soft time limit, as code stuck in C would (the hard limit kills it);
- ``crash_spec``: SIGKILLs its own process, every time (an out-of-memory kill, a segfault in native code).

The ledger lets a test count executions per job and compare them with the claims in the job table.

Example:
    $ MODELPRESS_FACTORY_ALLOWLIST=tests.faults.models modelpress submit --model tests.faults.models:slow_spec ...
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch
from torch import nn

from modelpress.optimize.spec import ModelSpec, TaskData


def _current_job_id() -> str:
    from celery import current_task

    req = getattr(current_task, "request", None)
    return str(req.args[0]) if req is not None and req.args else "-"


def record(event: str) -> None:
    """Append one line to the ledger (O_APPEND: lines from concurrent processes do not interleave)."""
    ledger = os.environ.get("MP_FAULT_LEDGER")
    if ledger:
        fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{_current_job_id()} {os.getpid()} {event} {time.time():.3f}\n".encode())
        finally:
            os.close(fd)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x)))


def _randn(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _data() -> TaskData:
    return TaskData(eval_inputs=_randn((64, 16), 1), eval_labels=None, calib_inputs=_randn((32, 16), 2),
                    train_inputs=_randn((64, 16), 3), description="tiny fixed random inputs")


class SlowToTrace(Tiny):
    """``Tiny`` whose forward, when FX traces it (inputs are proxies), records ``trace`` and sleeps
    ``MP_FAULT_TRACE_S`` seconds: a long stretch inside code that turns every exception into bad input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.fx.Proxy):
            record("trace")
            time.sleep(float(os.environ.get("MP_FAULT_TRACE_S", "5")))
        return super().forward(x)


def _spec(factory: str, behave, build=Tiny, module: str = __name__) -> ModelSpec:  # type: ignore[no-untyped-def]
    # The spec's name is how artifacts are reloaded later: the full allow-listed factory path (``module`` is
    # the module that defines the factory, e.g. tests.faults.memory_models).
    name = f"{module}:{factory}"

    def pretrained(model: nn.Module, cache_dir: Path | None) -> None:
        record("start")
        behave()
        torch.manual_seed(0)
        model.load_state_dict(Tiny().state_dict())

    return ModelSpec(name=name, version=1, build=build, data=_data, metric="top1_agreement",
                     make_input=lambda b: _randn((b, 16), 100 + b), latency_batches=(1, 8),
                     pretrained=pretrained, description=f"fault-test model: {name}")


def quick_spec() -> ModelSpec:
    return _spec("quick_spec", lambda: None)


def slow_spec() -> ModelSpec:
    return _spec("slow_spec", lambda: time.sleep(float(os.environ.get("MP_FAULT_SLOW_S", "4"))))


def slow_to_trace_spec() -> ModelSpec:
    return _spec("slow_to_trace_spec", lambda: None, build=SlowToTrace)


def sleepy_spec() -> ModelSpec:
    return _spec("sleepy_spec", lambda: time.sleep(120))


def _ignore_soft_limit() -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            time.sleep(0.2)
        except SoftTimeLimitExceeded:
            record("soft-limit-ignored")


def stubborn_spec() -> ModelSpec:
    return _spec("stubborn_spec", _ignore_soft_limit)


def crash_spec() -> ModelSpec:
    return _spec("crash_spec", lambda: os.kill(os.getpid(), signal.SIGKILL))

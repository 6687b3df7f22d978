"""A test-only training step that reports progress and keeps a checkpoint (issue 22 item 3); never in production.

``ReportProgressConfig`` (step type ``test_report_progress``) stands in for a long training step such as
distillation: it "trains" ``iterations`` iterations ``interval_s`` apart, saves its state to
``ctx.checkpoint_dir/state.json`` after each (atomically), calls ``ctx.progress`` with the usual keys, and on
start resumes from a state it finds there. It returns the model unchanged, so a recipe of this step alone
publishes the float model.

What each run saw (its checkpoint folder, the folder's mode, where it resumed) is appended to ``RUNS`` in this
process and, when ``MP_TEST_PROGRESS_LEDGER`` names a file, to that file as JSON lines: a worker process
writes there for the test that started it. Setting ``FAIL_AT`` makes a run die after that iteration's
checkpoint, as a worker killed mid-training would (in-process tests only).

Example:
    >>> from modelpress.optimize.recipes import Recipe
    >>> Recipe.from_dict({"name": "p", "steps": [{"type": "test_report_progress", "iterations": 3}]}).steps[0].iterations
    3
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from pydantic import Field
from torch import nn

from modelpress.optimize.recipes import StepConfig, register_step
from modelpress.optimize.techniques.registry import StepContext, StepOutput, register_handler

STEP_TYPE = "test_report_progress"
#: Every run of the step in this process: {"checkpoint_dir", "mode", "resumed_from", "pid"}.
RUNS: list[dict[str, Any]] = []
#: Die (RuntimeError) right after saving this iteration's checkpoint; None: run to the end.
FAIL_AT: int | None = None


class StepDied(RuntimeError):
    """The step was told to die mid-way (``FAIL_AT``)."""


@register_step(STEP_TYPE)
class ReportProgressConfig(StepConfig):
    """Pretend to train: ``iterations`` iterations ``interval_s`` apart, reporting and checkpointing each."""

    iterations: int = Field(default=3, ge=1, le=10_000)
    interval_s: float = Field(default=0.0, ge=0.0, le=60.0)


def _record(run: dict[str, Any]) -> None:
    RUNS.append(run)
    ledger = os.environ.get("MP_TEST_PROGRESS_LEDGER")
    if ledger:
        with open(ledger, "a") as f:
            f.write(json.dumps(run) + "\n")


@register_handler(ReportProgressConfig)
class ReportProgressHandler:
    def apply(self, model: nn.Module, cfg: ReportProgressConfig, ctx: StepContext) -> StepOutput:
        folder = ctx.checkpoint_dir
        state_file = folder / "state.json" if folder is not None else None
        start = json.loads(state_file.read_text())["iteration"] if state_file and state_file.exists() else 0
        _record({"checkpoint_dir": str(folder) if folder else None, "resumed_from": start, "pid": os.getpid(),
                 "mode": oct(stat.S_IMODE(folder.stat().st_mode)) if folder and folder.is_dir() else None})
        t0 = time.monotonic()
        for i in range(start + 1, cfg.iterations + 1):
            time.sleep(cfg.interval_s)
            if state_file is not None:
                tmp = state_file.with_suffix(".tmp")
                tmp.write_text(json.dumps({"iteration": i}))
                tmp.replace(state_file)  # atomic: a run killed here leaves the previous state whole
            ctx.progress({"step": STEP_TYPE, "iteration": i, "of": cfg.iterations, "loss": 1.0 / i,
                          "validation": 0.9 + i / (100 * cfg.iterations), "metric": "top1_agreement",
                          "elapsed_s": round(time.monotonic() - t0, 3)})
            if FAIL_AT == i:
                raise StepDied(f"told to die after iteration {i}")
        return StepOutput(model, {"iterations": cfg.iterations, "resumed_from": start})

    def rebuild(self, model: nn.Module, cfg: ReportProgressConfig, meta: dict[str, Any], *, engine: str) -> nn.Module:
        return model


def checkpoint_root(store: str | Path) -> Path:
    """Where ``optimize`` keeps every job's checkpoint folder under ``store``."""
    return Path(store) / "checkpoints"

"""The state every stage of one job shares: what is asked, on which rows, and the float baseline.

``JobPlan`` is made once by ``job.optimize_model`` after the source is resolved. It holds the recipe, the
engine, the store and the rows (eval, calibration, validation, train, kept apart), the timing settings and
the artifact key; ``measure_float`` adds the float baseline (the float artifact, its outputs and metric on
the eval rows) that every candidate is compared with. The stages (``candidates``, ``choose``, ``publish``)
take a plan and never reach back into ``job``.

Example:
    >>> from modelpress.optimize.recipes import resolve_recipe
    >>> key = plan_key(content="0" * 64, recipe=resolve_recipe("dynamic-int8"), engine="fbgemm", versions=None)
    >>> len(key)
    64
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from modelpress.optimize.artifacts import artifact_key, load_artifact, save_artifact_object
from modelpress.optimize.evaluate import eval_batch_size, float_reference
from modelpress.optimize.measure import count_flops, count_params, host_timing_lock, measure_latency
from modelpress.optimize.recipes import Recipe
from modelpress.optimize.runtimes.base import Runtime
from modelpress.optimize.spec import ModelSpec, TaskData


def plan_key(*, content: str, recipe: Recipe, engine: str, versions: dict[str, Any] | None) -> str:
    """The artifact key: model content, recipe, engine, torch version and, for another runtime, its versions.

    A torch-runtime recipe keys on torch alone (``versions=None``); a recipe naming ONNX Runtime, OpenVINO
    or ``auto`` adds every candidate runtime's package versions, so an upgrade measures anew.
    """
    tv = torch.__version__
    return artifact_key(content, recipe.sha256, engine,
                        tv if versions is None else tv + "|" + json.dumps(versions, sort_keys=True))


@dataclass
class FloatBaseline:
    """The float model as the user has it: its stored artifact and its figures on the eval rows."""

    path: Path
    sha256: str
    size_bytes: int
    outputs: torch.Tensor
    metric: float
    params: int
    flops: int


@dataclass
class JobPlan:
    """One job's inputs and settings, shared by every stage (see the module docstring)."""

    model_name: str
    spec: ModelSpec
    recipe: Recipe
    engine: str
    store: Path
    float_model: nn.Module
    content: str
    model_manifest: dict[str, Any]
    key: str
    allowlist: tuple[str, ...] = ()
    threads: int = 1
    warmup: int = 10
    runs: int = 50
    log: Callable[[str], None] = lambda m: None
    lock_dir: Any = None
    #: Handed to every step (``StepContext.progress``): a training step reports how far it is with it.
    progress: Callable[[dict[str, Any]], None] = lambda p: None
    #: Every timing phase of the job: lock wait, start/end, host load.
    timings: list[dict[str, Any]] = field(default_factory=list)
    data: TaskData | None = None
    base: FloatBaseline | None = None
    #: ``time.monotonic()`` at the job's soft time limit (None: no limit known); a search tries no level that
    #: would not fit before it, and its polishing uses only the time the job does not otherwise need.
    deadline: float | None = None

    def seconds_left(self) -> float | None:
        """Seconds until the job's soft time limit, or None when the job has none.

        Example:
            >>> plan.seconds_left()  # doctest: +SKIP
            912.4
        """
        return None if self.deadline is None else self.deadline - time.monotonic()

    @property
    def checkpoint_dir(self) -> Path:
        """Where this job's steps keep their training state: ``<store>/checkpoints/<key>``.

        Named by the artifact key, so a job delivered again after its worker died (same model, recipe,
        engine, versions: the same key) finds what the lost run saved and resumes from it. ``run_model``
        creates it before the steps run and removes it once the result is written. Two jobs with the
        same key running at once on one store share it: a step writes its checkpoint atomically.

        Example:
            >>> plan.checkpoint_dir  # doctest: +SKIP
            PosixPath('/srv/store/checkpoints/3f2a…')
        """
        return self.store / "checkpoints" / self.key

    @property
    def eval_bs(self) -> int:
        return eval_batch_size(self.spec)

    @property
    def base_manifest(self) -> dict[str, Any]:
        return {"model": self.model_manifest, "engine": self.engine, "torch_version": torch.__version__}

    def rows(self) -> TaskData:
        """The model's rows, loaded once."""
        if self.data is None:
            self.data = self.spec.data()
        return self.data

    def baseline(self) -> FloatBaseline:
        assert self.base is not None, "measure_float runs before the candidates are built"
        return self.base

    def load(self, rt: Runtime, path: Path) -> Callable[..., torch.Tensor]:
        """An artifact reloaded as a user would (a torch ``.mpz`` is rebuilt under the job's allow-list)."""
        if rt.name == "torch":
            return load_artifact(path, allowlist=self.allowlist, engine=self.engine).model
        return rt.load(path, self.threads)

    def latencies(self, fn: Callable[..., torch.Tensor], phase: str = "") -> list[dict[str, Any]]:
        """``fn`` timed at each of the spec's latency batches, under the host-wide timing lock."""
        # Only the timing holds the lock (issue 10 item 11): candidates of other jobs on this host are
        # built beside it, but never timed at the same moment.
        with host_timing_lock(self.lock_dir, phase=phase) as rec:
            stats = [measure_latency(fn, self.spec.make_input(b), warmup=self.warmup, runs=self.runs,
                                     threads=self.threads).to_dict() for b in self.spec.latency_batches]
        self.timings.append(rec)
        return stats


def measure_float(plan: JobPlan) -> FloatBaseline:
    """Store the float model as an immutable object and measure it on the eval rows (the "before")."""
    float_path, float_sha, size = save_artifact_object(
        plan.store / "float", plan.float_model, {**plan.base_manifest, "recipe": {"steps": []}, "steps_meta": []})
    plan.log("measuring the float model")
    ref_out, metric = float_reference(plan.float_model, plan.spec, plan.rows(), plan.eval_bs)
    probe = plan.spec.make_input(1)
    plan.base = FloatBaseline(float_path, float_sha, size, ref_out, metric, count_params(plan.float_model),
                              count_flops(plan.float_model, probe))
    return plan.base


__all__ = ["FloatBaseline", "JobPlan", "measure_float", "plan_key"]

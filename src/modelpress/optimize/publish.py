"""Stage 5 of a job: save the chosen artifact once, reload it, check it, and write the result.

The chosen candidate is written by its own runtime (``Runtime.save``) into a temporary file, then
published as an immutable object named by its sha256: under ``artifacts/``, or ``rejected/`` when the
budget is not kept on the eval rows (users want to see it, never under the promoted name). It is reloaded
as a user would (``reload_check``: the reloaded artifact must give exactly the outputs that were measured),
and that reloaded artifact is what the reported latency times. The result object is written last, then
the key's index is re-pointed at it atomically.

Example:
    >>> verdict(before=1.0, after=0.5, budget=None, metric="accuracy", runtime="torch")
    ('succeeded', None)
"""

from __future__ import annotations

import math
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from modelpress.filemodes import make_private_dirs
from modelpress.optimize.artifacts import atomic_write_json, publish_object, put_json_object
from modelpress.optimize.measure import batch_of, count_flops, count_params, global_sparsity, n_samples, predict
from modelpress.optimize.plan import JobPlan
from modelpress.optimize.recipes import Budget
from modelpress.optimize.result import OptimizeResult
from modelpress.optimize.runtimes.base import Runtime
from modelpress.optimize.runtimes.registry import get_runtime


@dataclass
class Published:
    """The chosen artifact as stored: where, its hash and bytes, and the artifact reloaded from there."""

    path: Path
    sha256: str
    size_bytes: int
    served: Callable[..., torch.Tensor]


def verdict(*, before: float, after: float, budget: Budget | None, metric: str, runtime: str,
            note: str = "") -> tuple[str, str | None]:
    """The job's status on the eval rows: ``succeeded``, or ``rejected`` with the numbers that broke the budget."""
    if budget is None or budget.allows(before=before, after=after):
        return "succeeded", None
    return "rejected", (f"{metric} fell from {before:.4f} to {after:.4f} in {runtime}, more than the budget "
                        f"allows ({budget.allowed_drop(before):.4f}){note}")


def verify_reload(plan: JobPlan, rt: Runtime, path: Path, fn: Callable[..., torch.Tensor],
                  measured: torch.Tensor) -> dict[str, Any]:
    """Require the reloaded artifact ``fn`` to give the measured outputs on the first eval batch."""
    data = plan.rows()
    n = min(n_samples(data.eval_inputs), plan.eval_bs)
    b = batch_of(data.eval_inputs, 0, n)
    got = predict(fn, b[0] if len(b) == 1 else b, batch_size=plan.eval_bs)
    want = measured[:n]
    diff = float((got - want).abs().max()) if got.shape == want.shape else math.inf
    if not torch.equal(got, want):
        raise RuntimeError(f"artifact {path.name} does not reproduce the measured outputs after reload "
                           f"(max abs difference {diff}); this is a bug in the {rt.name} adapter's save/load "
                           "or a step's rebuild")
    return {"samples": n, "max_abs_diff": diff, "equal": True}


def publish_artifact(plan: JobPlan, win: dict[str, Any], *, status: str, workdir: Path,
                     extra: dict[str, Any], verify: bool = True) -> Published:
    """Write the chosen candidate once as an immutable object, reload it, and check it (``extra["reload_check"]``)."""
    folder = plan.store / ("rejected" if status == "rejected" else "artifacts")
    make_private_dirs(folder)
    rt = get_runtime(win["runtime"])
    tmp = workdir / f"artifact{win['suffix']}"
    measured = Path(win["path"]) if win.get("path") else None
    if measured is not None and measured.is_file():
        # The very file that was loaded and measured, not a second serialisation of the in-memory model: a
        # runtime's in-memory model can share buffers with torch tensors (OpenVINO converts with shared
        # weights) that later work has freed or reused, and saving it again then writes other numbers.
        shutil.copyfile(measured, tmp)
    else:
        rt.save(win["_exported"], tmp)
    path, sha, size = publish_object(tmp, folder, win["suffix"])
    served = plan.load(rt, path)  # loaded once: what the check compares and what the latency times
    if verify:
        extra["reload_check"] = verify_reload(plan, rt, path, served, win["_outputs"])
    return Published(path, sha, size, served)


def write_result(plan: JobPlan, win: dict[str, Any], art: Published, *, status: str, reason: str | None,
                 metric_after: float, b1: dict[str, Any], latency: tuple[list[dict[str, Any]], list[dict[str, Any]]],
                 extra: dict[str, Any]) -> OptimizeResult:
    """The job's ``OptimizeResult``, stored as an object and named by the key's index (written last)."""
    base, spec, recipe = plan.baseline(), plan.spec, plan.recipe
    last_float = win["_last_float"]
    probe = spec.make_input(1)
    params_after = win["_params_after"] if win["_params_after"] is not None else count_params(last_float)
    result = OptimizeResult(
        status=status, reason=reason, model_name=spec.name, model_sha256=plan.content, recipe=recipe.to_dict(),
        recipe_sha256=recipe.sha256, engine=plan.engine, torch_version=torch.__version__, arch=platform.machine(),
        artifact_key=plan.key, artifact_path=str(art.path), float_artifact_path=str(base.path),
        size_before_bytes=base.size_bytes, size_after_bytes=art.size_bytes, metric_name=str(spec.metric)[:64],
        metric_before=base.metric, metric_after=metric_after, latency_before=latency[0], latency_after=latency[1],
        params_before=base.params, params_after=params_after, flops_before=base.flops,
        flops_after=count_flops(last_float, probe), sparsity_after=global_sparsity(last_float),
        float_layers=sorted(win.get("float_layers", [])), steps_meta=win["_steps_meta"],
        eval_description=plan.rows().description, extra=extra, artifact_sha256=art.sha256,
        float_artifact_sha256=base.sha256, metric_eval_batch_size=plan.eval_bs,
        metric_before_b1=b1["before"], metric_after_b1=b1["after"], metric_b1_rows=b1["rows"],
        runtime=win["runtime"], runtime_versions=win["versions"],
    )
    _, result_sha = put_json_object(plan.store / "results", {**result.to_dict(), "reused": False})
    atomic_write_json(plan.store / "index" / f"{plan.key}.json", {"key": plan.key, "result_sha256": result_sha})
    return result


__all__ = ["Published", "publish_artifact", "verdict", "verify_reload", "write_result"]

"""A long step sees the job's progress callback and a checkpoint folder that outlives a run that dies (issue 22).

The step is the test-only ``test_report_progress`` (tests/progress_step.py): it reports every iteration and
resumes from the state it saved in ``ctx.checkpoint_dir``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import modelpress
from modelpress.optimize.job import optimize_model
from modelpress.optimize.recipes import Recipe
from tests import progress_step
from tests.progress_step import STEP_TYPE, StepDied, checkpoint_root

FAST = {"warmup": 1, "runs": 3}


def _recipe(iterations: int = 3, runtime: str = "torch", quantize: bool = False, budget: dict | None = None) -> Recipe:
    steps = [{"type": STEP_TYPE, "iterations": iterations}] + ([{"type": "quantize_dynamic"}] if quantize else [])
    return Recipe.from_dict({"name": "progress", "steps": steps, "runtime": runtime, "budget": budget})


@pytest.fixture(autouse=True)
def _fresh_runs():
    progress_step.RUNS.clear()
    progress_step.FAIL_AT = None
    yield
    progress_step.FAIL_AT = None


# torch builds the whole recipe itself (runtimes.torch_recipe); onnxruntime runs the torch steps first and then
# quantizes (candidates.build_in_runtimes, search.search_levels): both create the StepContext a step gets.
@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_a_step_reports_through_optimize_models_progress_and_trains_in_a_private_folder_named_by_the_key(
        tmp_path, runtime):
    seen: list[dict] = []
    r = optimize_model(model_name="mlp", recipe=_recipe(runtime=runtime, quantize=runtime != "torch"),
                       engine="fbgemm", store=tmp_path, progress=seen.append, **FAST)

    assert [(p["step"], p["iteration"], p["of"]) for p in seen] == [(STEP_TYPE, i, 3) for i in (1, 2, 3)]
    (run,) = progress_step.RUNS
    assert run["checkpoint_dir"] == str(checkpoint_root(tmp_path) / r.artifact_key)
    assert run["mode"] == "0o750" and run["resumed_from"] == 0
    # The result is written: nothing is left to resume.
    assert r.status in ("succeeded", "rejected")
    assert not (checkpoint_root(tmp_path) / r.artifact_key).exists()


def test_a_job_that_dies_mid_way_keeps_its_checkpoint_and_the_same_job_run_again_resumes_there_then_removes_it(
        tmp_path):
    progress_step.FAIL_AT = 2
    seen: list[dict] = []
    with pytest.raises(StepDied):
        optimize_model(model_name="mlp", recipe=_recipe(iterations=5), engine="fbgemm", store=tmp_path,
                       progress=seen.append, **FAST)
    (kept,) = list(checkpoint_root(tmp_path).iterdir())
    assert (kept / "state.json").read_text() == '{"iteration": 2}'

    progress_step.FAIL_AT = None
    r = optimize_model(model_name="mlp", recipe=_recipe(iterations=5), engine="fbgemm", store=tmp_path,
                       progress=seen.append, **FAST)

    first, again = progress_step.RUNS
    assert first["checkpoint_dir"] == again["checkpoint_dir"] == str(kept)
    assert kept.name == r.artifact_key
    assert (first["resumed_from"], again["resumed_from"]) == (0, 2)
    assert [p["iteration"] for p in seen] == [1, 2, 3, 4, 5]  # nothing trained twice
    assert list(checkpoint_root(tmp_path).iterdir()) == []


def test_a_rejected_job_removes_its_checkpoint_folder_too(tmp_path):
    # No drop allowed and no layer may stay float: dynamic int8 of the MLP cannot keep that budget.
    r = optimize_model(model_name="mlp", engine="fbgemm", store=tmp_path, **FAST,
                       recipe=_recipe(quantize=True, budget={"max_drop": 0.0, "max_float_layers": 0}))
    assert r.status == "rejected", r.reason
    assert progress_step.RUNS[0]["checkpoint_dir"] == str(checkpoint_root(tmp_path) / r.artifact_key)
    assert list(checkpoint_root(tmp_path).iterdir()) == []


EXTERNAL = ("celery", "kombu", "sqlalchemy", "alembic")
INTERNAL = ("modelpress.models_db", "modelpress.tasks", "modelpress.workers")


def _banned(module: str) -> bool:
    return module.split(".")[0] in EXTERNAL or any(module == m or module.startswith(m + ".") for m in INTERNAL)


def _imports(path: Path) -> list[str]:
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            out.append(node.module or "")
    return out


def test_the_optimize_package_imports_neither_celery_nor_sqlalchemy_nor_the_job_table():
    # optimize/ is the pure-torch layer: the task hands it callbacks, never a session or a Celery task.
    # Every import counts, inside functions too (they run later, but they still run).
    root = Path(modelpress.__file__).resolve().parent / "optimize"
    found = [f"{p.relative_to(root)}: {m}" for p in sorted(root.rglob("*.py")) for m in _imports(p) if _banned(m)]
    assert found == []
    assert _banned("celery.events") and _banned("modelpress.models_db.jobs") and not _banned("modelpress.optimize")

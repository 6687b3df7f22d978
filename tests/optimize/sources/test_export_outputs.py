"""An ``export:`` program with several outputs (issue 23 item 2): a face detector's box, landmarks and face score.

Every output is compared with float (or with its labels, ``labels.<output>``), a stated primary output carries
the budget and is the reported metric, and the artifact returns all the program's outputs in every runtime.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from modelpress.errors import DataError, ModelLoadError, UserInputError
from tests.optimize.sources.conftest import run
from tests.own_models_fixtures import build_facenet, facenet_images


@pytest.fixture(scope="module")
def facenet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_facenet(tmp_path_factory.mktemp("facenet"))


def _ref(f: dict[str, Path], *, eval_file: str = "eval", train: bool = False, **over):  # type: ignore[no-untyped-def]
    from modelpress.optimize.sources import parse_model_ref

    data = {"eval": str(f[eval_file]), "calibration": str(f["calib"])}
    if train:
        data["train"] = str(f["train"])
    return parse_model_ref(f"export:{f['program']}", data=data, latency_batches=(1, 8), **over)


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "openvino"])
def test_every_output_is_judged_the_primary_carries_the_budget_and_the_artifact_returns_them_all(
        facenet, tmp_path: Path, runtime: str) -> None:
    from modelpress.optimize import optimize_model, resolve_recipe
    from modelpress.optimize.recipes import Recipe, with_runtime
    from modelpress.optimize.runtimes.registry import get_runtime

    # A 5-point budget: on 200 rows one face more or less misjudged by int8 is half a point.
    recipe = with_runtime(Recipe.from_dict({**resolve_recipe("static-int8").to_dict(), "budget": {"max_drop": 0.05}}),
                          runtime)
    r = optimize_model(model_ref=_ref(facenet, primary_output="face"), recipe=recipe, engine="fbgemm",
                       store=tmp_path, warmup=1, runs=3)
    assert r.status == "succeeded", r.reason
    assert r.runtime == runtime and r.metric_name == "accuracy[face]"
    outputs = {o["output"]: o for o in r.extra["outputs"]}
    assert list(outputs) == ["box", "landmarks", "face"]  # the program's dict keys, in its order
    face = outputs["face"]
    assert face["primary"] and face["metric"] == "accuracy" and not outputs["box"]["primary"]
    # The face score was learnt (chance is 0.5), and the reported metric is the primary output's.
    assert face["before"] > 0.9 and (face["before"], face["after"]) == (r.metric_before, r.metric_after)
    for name in ("box", "landmarks"):  # no labels: cosine to the float program's same output
        assert outputs[name]["metric"] == "cosine" and outputs[name]["before"] == pytest.approx(1.0)
        assert 0.9 < outputs[name]["after"] <= 1.0 + 1e-6, outputs[name]
    assert r.extra["reload_check"]["equal"]
    served = get_runtime(runtime).load(Path(r.artifact_path), threads=1)(facenet_images(3, seed=9)[0])
    assert [tuple(t.shape) for t in served] == [(3, 4), (3, 5, 2), (3, 2)]


def test_without_a_primary_output_the_first_carries_the_budget_by_cosine(facenet, tmp_path: Path) -> None:
    r = run(_ref(facenet), "dynamic-int8", tmp_path, warmup=1, runs=3)
    assert r.metric_name == "cosine[box]" and r.metric_before == pytest.approx(1.0)
    assert [o["primary"] for o in r.extra["outputs"]] == [True, False, False]
    assert r.extra["outputs"][2]["metric"] == "accuracy"  # still judged against its labels, beside


def test_labels_must_name_their_output(facenet, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"labels\.<output>.*labels\.box"):
        run(_ref(facenet, eval_file="bare"), "dynamic-int8", tmp_path)
    with pytest.raises(DataError, match="labels for score, which the program does not output"):
        run(_ref(facenet, eval_file="unknown"), "dynamic-int8", tmp_path)


def test_a_primary_output_the_program_lacks_is_refused_with_its_outputs(facenet, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"'score' is not an output.*\['box', 'landmarks', 'face'\]"):
        run(_ref(facenet, primary_output="score"), "dynamic-int8", tmp_path)


def test_a_training_step_is_refused_naming_the_outputs_and_leaves_nothing(facenet, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"returns 3 \(box, landmarks, face\)"):
        run(_ref(facenet, train=True), "qat-int8", tmp_path)
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "checkpoints").exists()

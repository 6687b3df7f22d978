"""An ``hf:`` image classifier (issue 23 item 1): image folders, preprocessing read from the folder's
``preprocessor_config.json`` as data, class subfolders named by ``id2label``; judged in every runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from modelpress.errors import DataError, UserInputError
from tests.optimize.sources.conftest import run
from tests.own_models_fixtures import IMAGE_CLASSES, build_hf_vit


@pytest.fixture(scope="module")
def vit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from modelpress.optimize.sources.vision import import_torchvision

    import_torchvision()
    return build_hf_vit(tmp_path_factory.mktemp("vit"))


def _ref(v: dict[str, Path], *, eval_file: str = "eval", **over):  # type: ignore[no-untyped-def]
    from modelpress.optimize.sources import parse_model_ref

    return parse_model_ref(f"hf:{v['folder']}", data={"eval": str(v[eval_file]), "calibration": str(v["calib"])},
                           latency_batches=(1, 8), **over)


@pytest.mark.parametrize("processor, kwargs", [
    ("ViTImageProcessor", {}), ("ConvNextImageProcessor", {}), ("EfficientNetImageProcessor", {}),
    ("BeitImageProcessor", {}),
    ("MobileViTImageProcessor", {"size": {"shortest_edge": 96}, "crop_size": {"height": 80, "width": 80}}),
])
def test_our_pixels_equal_the_folders_own_processor_on_an_image_at_its_resize_side(tmp_path: Path, processor: str,
                                                                                    kwargs: dict) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from modelpress.optimize.sources.vision import import_torchvision

    import_torchvision()
    import transformers

    from modelpress.optimize.sources.data import preprocess_image
    from modelpress.optimize.sources.hf_images import read_preprocess

    transformers_processor = getattr(transformers, processor)(**kwargs)
    transformers_processor.save_pretrained(tmp_path)
    pre = read_preprocess(tmp_path, class_defaults=True)
    # At the side the processor resizes to, neither resizes: what is compared is crop, scale and normalisation.
    side = pre["resize"]
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8))
    theirs = transformers_processor(img, return_tensors="pt")["pixel_values"][0]
    ours = preprocess_image(img, pre)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-4), float((ours - theirs).abs().max())


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "openvino"])
def test_a_vit_folder_is_judged_by_accuracy_on_folders_named_by_its_classes(vit, tmp_path: Path, runtime: str) -> None:
    from modelpress.optimize import optimize_model, resolve_recipe
    from modelpress.optimize.recipes import Recipe, with_runtime
    from modelpress.optimize.runtimes.registry import get_runtime
    from modelpress.optimize.sources import get_source

    recipe = with_runtime(Recipe.from_dict({**resolve_recipe("static-int8").to_dict(), "budget": {"max_drop": 0.05}}),
                          runtime)
    r = optimize_model(model_ref=_ref(vit), recipe=recipe, engine="fbgemm", store=tmp_path, warmup=1, runs=3)
    assert r.status == "succeeded", r.reason
    assert r.metric_name == "accuracy" and r.metric_before > 0.9  # 4 classes: chance is 0.25
    assert r.metric_after > r.metric_before - 0.05 and r.extra["reload_check"]["equal"]
    x = get_source("hf").load(_ref(vit)).spec.data().eval_inputs[:3]
    assert tuple(get_runtime(runtime).load(Path(r.artifact_path), threads=1)(x).shape) == (3, len(IMAGE_CLASSES))


def test_labels_follow_id2label_not_the_subfolders_sort_order(vit, tmp_path: Path) -> None:
    from modelpress.optimize.sources import get_source

    cfg = json.loads((vit["folder"] / "config.json").read_text())
    # The folder's names sorted (blue, green, red, striped) are not the config's order (red, green, blue, ...).
    assert sorted(IMAGE_CLASSES) != IMAGE_CLASSES and cfg["id2label"]["0"] == "red"
    loaded = get_source("hf").load(_ref(vit))
    td = loaded.spec.data()
    logits = loaded.model(td.eval_inputs)
    assert float((logits.argmax(-1) == td.eval_labels).float().mean()) > 0.9


def test_images_without_class_subfolders_are_judged_by_agreement(vit, tmp_path: Path) -> None:
    r = run(_ref(vit, eval_file="plain"), "dynamic-int8", tmp_path, warmup=1, runs=3)
    assert r.metric_name == "top1_agreement" and r.metric_before == pytest.approx(1.0)


def test_a_training_step_is_refused_for_an_hf_image_classifier(vit, tmp_path: Path) -> None:
    from modelpress.optimize.sources import parse_model_ref

    ref = parse_model_ref(f"hf:{vit['folder']}", data={"eval": str(vit["eval"]), "train": str(vit["train"])})
    with pytest.raises(UserInputError, match="not offered for hf: image classifiers"):
        run(ref, "qat-int8", tmp_path)
    assert not (tmp_path / "artifacts").exists()


def test_submit_refuses_unknown_class_folders_text_data_and_a_non_square_processor(vit, tmp_path: Path) -> None:
    from modelpress.optimize.sources import parse_model_ref
    from modelpress.optimize.sources.submit_hf import submit_check

    assert submit_check(_ref(vit), max_bytes=1 << 30) == []
    odd = tmp_path / "odd"
    shutil.copytree(vit["eval"], odd)
    (odd / "red").rename(odd / "crimson")
    problems = submit_check(parse_model_ref(f"hf:{vit['folder']}", data={"eval": str(odd)}), max_bytes=1 << 30)
    assert [loc for loc, _ in problems] == [("data", "eval")] and "'crimson' is not one of the model's classes" in problems[0][1]
    text = tmp_path / "e.jsonl"
    text.write_text('{"text": "a red image"}\n')
    problems = submit_check(parse_model_ref(f"hf:{vit['folder']}", data={"eval": str(text)}), max_bytes=1 << 30)
    assert "an image classifier's data is a folder of images" in problems[0][1]
    folder = tmp_path / "wide"
    shutil.copytree(vit["folder"], folder)
    pc = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({**pc, "size": {"height": 32, "width": 48}}))
    problems = submit_check(parse_model_ref(f"hf:{folder}", data={"eval": str(vit["eval"])}), max_bytes=1 << 30)
    assert [loc for loc, _ in problems] == [("model",)] and "32x48; only square inputs" in problems[0][1]
    with pytest.raises(DataError, match="only square inputs"):
        run(parse_model_ref(f"hf:{folder}", data={"eval": str(vit["eval"])}), "dynamic-int8", tmp_path)

"""The ``torchvision:``/``timm:`` submit check (``sources.submit_vision``): names, weights, image folders, no torch."""

from __future__ import annotations

from modelpress.optimize.sources import parse_model_ref
from modelpress.optimize.sources.submit_vision import submit_check
from tests.tiny_model_files import safetensors_file

MB = 1 << 20


def test_an_unknown_torchvision_name_is_refused_with_close_names_and_missing_files_are_named(tmp_path):
    ref = parse_model_ref("torchvision:resnet81", weights=str(tmp_path / "w.safetensors"),
                          data={"eval": str(tmp_path / "imgs")})
    problems = dict(submit_check(ref, max_bytes=MB))
    assert "unknown torchvision model 'resnet81'; did you mean resnet18" in problems[("model",)]
    assert "does not exist" in problems[("weights",)] and "does not exist" in problems[("data", "eval")]


def test_an_image_folder_with_more_classes_than_the_weights_classifier_is_refused(tmp_path):
    weights = safetensors_file(tmp_path / "w.safetensors", {"fc.weight": [4, 8], "fc.bias": [4]})
    for c in range(5):
        (tmp_path / "imgs" / f"c{c}").mkdir(parents=True)
        (tmp_path / "imgs" / f"c{c}" / "a.png").write_bytes(b"not decoded at submit")
    ref = parse_model_ref("timm:resnet18", weights=str(weights), data={"eval": str(tmp_path / "imgs")})
    assert submit_check(ref, max_bytes=MB) == [
        (("data", "eval"), f"data folder {tmp_path / 'imgs'} has 5 class subfolders but the weights' classifier "
                           "has 4 outputs")]

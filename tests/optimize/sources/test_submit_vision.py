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


def test_a_train_image_folder_with_a_class_the_eval_folder_lacks_is_refused_at_submit(tmp_path):
    weights = safetensors_file(tmp_path / "w.safetensors", {"fc.weight": [4, 8], "fc.bias": [4]})
    for folder, classes in (("eval", ("cat", "dog")), ("train", ("cat", "cow"))):
        for c in classes:
            (tmp_path / folder / c).mkdir(parents=True)
            (tmp_path / folder / c / "a.png").write_bytes(b"not decoded at submit")
    ref = parse_model_ref("timm:resnet18", weights=str(weights),
                          data={"eval": str(tmp_path / "eval"), "train": str(tmp_path / "train")})
    assert submit_check(ref, max_bytes=MB) == [
        (("data", "train"), f"data folder {tmp_path / 'train'}: class subfolder(s) cow are not among the eval "
                            "folder's classes (cat, dog); class indices come from the eval folder's subfolder names")]
    (tmp_path / "train" / "cow").rename(tmp_path / "train" / "dog")
    assert submit_check(ref, max_bytes=MB) == []


def test_a_train_image_folder_with_more_classes_than_the_classifier_is_refused_at_submit(tmp_path):
    weights = safetensors_file(tmp_path / "w.safetensors", {"fc.weight": [2, 8], "fc.bias": [2]})
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "a.png").write_bytes(b"x")
    for c in ("a", "b", "c"):
        (tmp_path / "train" / c).mkdir(parents=True)
        (tmp_path / "train" / c / "1.png").write_bytes(b"x")
    ref = parse_model_ref("torchvision:resnet18", weights=str(weights),
                          data={"eval": str(tmp_path / "eval"), "train": str(tmp_path / "train")})
    assert submit_check(ref, max_bytes=MB) == [
        (("data", "train"), f"data folder {tmp_path / 'train'} has 3 class subfolders but the weights' classifier "
                            "has 2 outputs")]

"""Data readers: tensors by argument name, JSONL, image folders, the seeded calibration split, the train split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modelpress.errors import DataError, UserInputError
from modelpress.optimize.sources.data import (
    TrainRows,
    align_class_labels,
    check_labels,
    check_train_format,
    label_indices,
    make_task_data,
    read_images,
    read_jsonl,
    read_tensors,
    row_keys,
    split_rows,
)


def test_eval_validation_and_calibration_rows_are_seeded_disjoint_and_said_in_the_description() -> None:
    s = split_rows(1000, calibration_file=False)
    assert s == split_rows(1000, calibration_file=False)
    parts = [set(s.eval), set(s.validation), set(s.calibration)]
    assert sum(map(len, parts)) == 1000 and len(set().union(*parts)) == 1000  # disjoint, nothing lost
    assert len(s.validation) == len(s.calibration) == 200
    x = torch.arange(40.0).reshape(20, 2)
    td = make_task_data((x,), torch.arange(20) % 3, None, what="d.npz")
    rows = [{tuple(r) for r in t.tolist()} for t in (td.eval_inputs, td.val_inputs, td.calib_inputs)]
    assert not rows[0] & rows[1] and not rows[0] & rows[2] and not rows[1] & rows[2]
    assert td.val_labels is not None and len(td.val_labels) == len(td.val_inputs)
    assert "validation rows for choices" in td.description and "seed 0" in td.description


def test_with_a_calibration_file_validation_rows_are_still_apart_from_eval_and_calibration() -> None:
    x = torch.arange(40.0).reshape(20, 2)
    cal = (torch.full((5, 2), -1.0),)
    td = make_task_data((x,), None, (cal, None), what="d.npz")
    assert len(td.eval_inputs) + len(td.val_inputs) == 20 and len(td.calib_inputs) == 5
    assert not {tuple(r) for r in td.eval_inputs.tolist()} & {tuple(r) for r in td.val_inputs.tolist()}
    assert "5 rows of the calibration file" in td.description


@pytest.mark.parametrize("n, calibration_file, need", [(5, False, "at least 6 rows"), (3, True, "at least 4 rows")])
def test_data_too_small_to_split_is_refused_with_the_numbers_needed(n: int, calibration_file: bool, need: str) -> None:
    with pytest.raises(DataError, match=need):
        split_rows(n, calibration_file=calibration_file)


def test_tensors_are_read_by_forward_argument_name_with_labels(tmp_path: Path) -> None:
    f = tmp_path / "d.npz"
    np.savez(f, attention_mask=np.ones((6, 4), np.int64), input_ids=np.zeros((6, 4), np.int64), labels=np.arange(6))
    (ids, mask), y = read_tensors(f, ["input_ids", "attention_mask", "token_type_ids"],
                                  required=["input_ids", "attention_mask"])
    assert ids.shape == (6, 4) and mask.sum() == 24 and y.tolist() == list(range(6))


def test_tensors_with_wrong_names_are_refused_naming_both_sides(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    f = tmp_path / "d.safetensors"
    save_file({"x": torch.zeros(3, 2)}, str(f))
    with pytest.raises(DataError, match=r"not arguments: \['x'\].*missing: \['features'\]"):
        read_tensors(f, ["features"])


def test_npz_with_object_arrays_is_refused_without_unpickling(tmp_path: Path) -> None:
    f = tmp_path / "evil.npz"
    np.savez(f, features=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="could not be read"):
        read_tensors(f, ["features"])


def test_labels_outside_the_class_count_name_the_row(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="label 7 in row 3 is outside the model's 3 classes"):
        check_labels(torch.tensor([0, 1, 7]), 3, "d.npz")
    with pytest.raises(UserInputError, match="'cat' in row 1 is not one of the model's labels"):
        label_indices(["cat"], num_classes=2, label2id={"pos": 0, "neg": 1}, where="e.jsonl")


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    f = tmp_path / "e.jsonl"
    f.write_text('{"text": "ok", "label": 0}\n{"text": "no label"}\n')
    with pytest.raises(DataError, match="'label' is on 1 of 2 rows"):
        read_jsonl(f)
    f.write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(DataError, match="line 2: not valid JSON"):
        read_jsonl(f)


def test_image_folders_give_labels_from_sorted_class_folders(tmp_path: Path) -> None:
    from PIL import Image

    for c, colour in (("b_cat", (255, 0, 0)), ("a_dog", (0, 0, 255))):
        (tmp_path / c).mkdir()
        Image.new("RGB", (40, 30), colour).save(tmp_path / c / "1.png")
    pre = {"resize": 16, "crop": 16, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    x, y, names = read_images(tmp_path, pre)
    assert names == ["a_dog", "b_cat"] and y.tolist() == [0, 1]
    assert x.shape == (2, 3, 16, 16)
    assert float(x[0, 2].mean()) == pytest.approx(1.0) and float(x[1, 0].mean()) == pytest.approx(1.0)


def test_a_broken_image_is_named(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="image x.png could not be read"):
        read_images(tmp_path, {"resize": 8, "crop": 8, "mean": [0, 0, 0], "std": [1, 1, 1]})


# ----------------------------------------------------------------------------- the train split
def test_train_rows_also_in_the_eval_file_are_dropped_even_validation_rows_and_the_count_is_described() -> None:
    x = torch.arange(40.0).reshape(20, 2)
    split = split_rows(20, calibration_file=False)
    reported, validation = x[split.eval[0]], x[split.validation[0]]
    fresh = torch.full((5, 2), -1.0) - torch.arange(5.0).unsqueeze(1)
    train = TrainRows((torch.cat([fresh, reported[None], validation[None]]),), torch.arange(7) % 3, "t.npz")
    td = make_task_data((x,), None, None, what="e.npz", train=train)
    assert torch.equal(td.train_inputs, fresh)
    assert td.train_labels.tolist() == [0, 1, 2, 0, 1]  # labels follow their rows
    assert td.description.endswith("; train: 5 rows from t.npz, 2 also in the eval file dropped")


def test_a_train_file_without_eval_rows_keeps_every_row_and_says_so() -> None:
    td = make_task_data((torch.zeros(10, 3),), None, None, what="e.npz",
                        train=TrainRows((torch.ones(4, 3),), None, "t.npz"))
    assert td.train_inputs.shape == (4, 3) and td.train_labels is None
    assert "train: 4 rows from t.npz, none also in the eval file" in td.description


def test_a_train_file_made_only_of_eval_rows_is_refused_naming_both_files() -> None:
    x = torch.arange(40.0).reshape(20, 2)
    with pytest.raises(DataError, match="train data t.npz: all 3 of its rows are also in the eval data e.npz"):
        make_task_data((x,), None, None, what="e.npz", train=TrainRows((x[[3, 7, 7]],), None, "t.npz"))


def test_rows_are_the_same_only_when_every_input_holds_the_same_values() -> None:
    ids = torch.tensor([[1, 2], [1, 2]])
    mask = torch.tensor([[1, 1], [1, 0]])
    a, b = row_keys((ids, mask))
    assert a != b  # same first input, another second one
    assert row_keys((torch.tensor([[0.0]]),)) == row_keys((torch.tensor([[-0.0]]),))
    assert row_keys((torch.tensor([[1.0]]),)) != row_keys((torch.tensor([[1.0]], dtype=torch.float64),))


def test_text_rows_are_compared_by_their_text_and_text_pair_when_keys_are_given() -> None:
    ids = torch.zeros(8, 3, dtype=torch.long)  # the same tokens everywhere: only the keys tell rows apart
    eval_keys = [(t, None) for t in "abcdefgh"]
    train = TrainRows((ids[:3],), None, "t.jsonl", keys=[("a", None), ("a", "x"), ("z", None)])
    td = make_task_data((ids,), None, None, what="e.jsonl", train=train, eval_keys=eval_keys)
    assert td.train_inputs.shape[0] == 2 and "1 also in the eval file dropped" in td.description


def test_a_train_folders_class_subfolders_are_indexed_by_the_eval_folders_class_names() -> None:
    assert align_class_labels(torch.tensor([0, 1, 1]), ["cat", "fish"], ["cat", "dog", "fish"], "t").tolist() == [
        0, 2, 2]
    assert align_class_labels(torch.tensor([1]), ["b"], [], "t").tolist() == [1]  # flat eval: own indices
    with pytest.raises(DataError, match=r"image folder t: class subfolder\(s\) \['cow'\] are not among"):
        align_class_labels(torch.tensor([0]), ["cow"], ["cat", "dog"], "image folder t")


def test_train_tensors_in_another_format_than_the_eval_datas_are_refused() -> None:
    check_train_format((torch.zeros(2, 4),), (torch.zeros(9, 4),), ["features"], "train data t.npz")
    with pytest.raises(DataError, match=r"train data t.npz: tensor 'features' is float64 with rows of shape \[4\], "
                                        r"but the eval data's is float32"):
        check_train_format((torch.zeros(2, 4, dtype=torch.float64),), (torch.zeros(9, 4),), ["features"],
                           "train data t.npz")
    with pytest.raises(DataError, match=r"rows of shape \[5\]"):
        check_train_format((torch.zeros(2, 5),), (torch.zeros(9, 4),), ["features"], "t")

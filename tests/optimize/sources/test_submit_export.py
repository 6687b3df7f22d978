"""The ``export:`` submit check (``sources.submit_export``): the ``.pt2`` archive and its data's tensor names."""

from __future__ import annotations

from modelpress.optimize.sources import parse_model_ref
from modelpress.optimize.sources.submit_export import submit_check
from tests.tiny_model_files import pt2_file, safetensors_file

MB = 1 << 20


def test_a_pt2_with_pickled_weights_is_refused_before_anything_loads_it(tmp_path):
    data = safetensors_file(tmp_path / "eval.safetensors", {"features": [2, 4]})
    ref = parse_model_ref(f"export:{pt2_file(tmp_path / 'm.pt2', use_pickle=True)}", data={"eval": str(data)})
    ((loc, message),) = submit_check(ref, max_bytes=MB)
    assert loc == ("model",) and "weight 'w' (m/data/weights/model_weights_config.json) is stored as a pickled" \
        in message


def test_tensor_names_that_are_not_the_programs_inputs_are_refused_naming_both(tmp_path):
    data = safetensors_file(tmp_path / "eval.safetensors", {"feats": [2, 4], "labels": [2]})
    ref = parse_model_ref(f"export:{pt2_file(tmp_path / 'm.pt2')}", data={"eval": str(data)})
    ((loc, message),) = submit_check(ref, max_bytes=MB)
    assert loc == ("data", "eval")
    assert "holds tensors feats but the program's inputs are features (missing: features)" in message
    good = safetensors_file(tmp_path / "good.safetensors", {"features": [2, 4], "labels": [2]})
    assert submit_check(ref.with_paths(data={"eval": str(good)}), max_bytes=MB) == []


def test_train_tensors_whose_labels_are_not_class_indices_are_refused_at_submit_naming_the_file(tmp_path):
    data = safetensors_file(tmp_path / "eval.safetensors", {"features": [2, 4], "labels": [2]})
    train = safetensors_file(tmp_path / "train.safetensors", {"features": [3, 4], "labels": [3]},
                             dtypes={"labels": "F32"})
    ref = parse_model_ref(f"export:{pt2_file(tmp_path / 'm.pt2')}", data={"eval": str(data), "train": str(train)})
    assert submit_check(ref, max_bytes=MB) == [
        (("data", "train"), "data file train.safetensors: 'labels' must be a 1-D integer tensor of class indices "
                            "(got float, shape [3])")]
    safetensors_file(train, {"features": [3, 4], "labels": [2]})
    assert submit_check(ref, max_bytes=MB) == [
        (("data", "train"), "data file train.safetensors: every tensor needs the same number of rows (first "
                            "dimension); got features [3, 4], labels [2]")]
    safetensors_file(train, {"feats": [3, 4]})
    assert [loc for loc, _ in submit_check(ref, max_bytes=MB)] == [("data", "train")]  # named like eval's tensors
    safetensors_file(train, {"features": [3, 4]})  # labels are optional
    assert submit_check(ref, max_bytes=MB) == []


def test_labels_named_per_output_pass_submit_and_are_matched_to_the_outputs_on_the_worker(tmp_path):
    data = safetensors_file(tmp_path / "eval.safetensors", {"features": [2, 4], "labels.face": [2]})
    ref = parse_model_ref(f"export:{pt2_file(tmp_path / 'm.pt2')}", data={"eval": str(data)})
    assert submit_check(ref, max_bytes=MB) == []

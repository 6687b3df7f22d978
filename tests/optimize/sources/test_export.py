"""``export:`` models: int8 through optimize_model, reload, and a .pt2 that carries a pickle payload."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from modelpress.errors import DataError, ModelLoadError, UserInputError
from tests.optimize.sources.conftest import ref_of, run
from tests.own_models_fixtures import ACCURACY_FLOOR


@pytest.mark.parametrize("recipe", ["dynamic-int8", "static-int8"])
def test_an_exported_program_is_quantized_measured_and_reloads_identically(export_model, tmp_path: Path,
                                                                           recipe: str) -> None:
    import modelpress

    r = run(ref_of(export_model), recipe, tmp_path)
    assert r.status == "succeeded" and r.metric_name == "accuracy"
    # The fixture's model learned its task (chance is 0.2): the int8 delta is about something.
    assert r.metric_before >= ACCURACY_FLOOR["export"], r.metric_before
    assert abs(r.metric_after - r.metric_before) < 0.1
    # int8 weights: the artifact is well under half of the float one (Linear 64-256-256-5).
    assert r.size_after_bytes * 3 < r.size_before_bytes
    from modelpress.optimize.backends import is_quantized_module

    assert any(is_quantized_module(m) for m in modelpress.load(r.artifact_path).modules())
    assert r.extra["reload_check"]["equal"] is True
    assert [s["batch_size"] for s in r.latency_after] == [1, 32]
    assert "128 rows of the calibration file" in r.eval_description


def test_the_artifact_records_the_reference_and_reloads_from_it(export_model, tmp_path: Path) -> None:
    import modelpress
    from modelpress.optimize.artifacts import read_manifest
    from safetensors.torch import load_file

    r = run(ref_of(export_model), "dynamic-int8", tmp_path)
    manifest, _ = read_manifest(r.artifact_path)
    assert manifest["model"]["ref"]["kind"] == "export"
    x = load_file(str(export_model.eval))["features"][:16]
    a = modelpress.load(r.artifact_path)(x)
    b = modelpress.load(r.artifact_path)(x)
    assert a.shape == (16, 5) and torch.equal(a, b)


def test_training_steps_are_refused_before_anything_runs(export_model, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="no training set"):
        run(ref_of(export_model), "qat-int8", tmp_path)


def test_tensors_named_unlike_the_forward_arguments_are_refused(export_model, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"inputs": torch.zeros(8, 64), "labels": torch.zeros(8, dtype=torch.long)}, str(bad))
    with pytest.raises(DataError, match=r"forward takes \['features'\].*not arguments: \['inputs'\]"):
        run(ref_of(export_model, data={"eval": str(bad)}), "dynamic-int8", tmp_path)


def test_labels_outside_the_outputs_are_refused(export_model, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"features": torch.zeros(8, 64), "labels": torch.full((8,), 9)}, str(bad))
    with pytest.raises(DataError, match="label 9 in row 1 is outside the model's 5 classes"):
        run(ref_of(export_model, data={"eval": str(bad)}), "dynamic-int8", tmp_path)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def _poison(good: Path, out: Path, marker: Path) -> None:
    """Copy ``good`` making its first weight a pickled payload (as torch.save of a tensor subclass would)."""
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if "/data/weights/" in info.filename and info.filename.endswith(".json"):
                cfg = json.loads(data)
                first = next(iter(cfg["config"]))
                cfg["config"][first]["use_pickle"] = True
                cfg["config"][first]["path_name"] = "weight_evil"
                data = json.dumps(cfg).encode()
                prefix = info.filename.rsplit("/", 1)[0]
                zout.writestr(f"{prefix}/weight_evil", pickle.dumps(_Payload(marker)))
            zout.writestr(info, data)


def test_a_pickle_payload_inside_the_pt2_never_runs(export_model, tmp_path: Path) -> None:
    from modelpress.optimize.sources.export import _weights_only_everywhere

    good = Path(export_model.model.removeprefix("export:"))
    evil = tmp_path / "evil.pt2"
    marker = tmp_path / "pwned"
    _poison(good, evil, marker)
    with pytest.raises(ModelLoadError, match=r"pickled object \(weight_evil\), which modelpress never unpickles"):
        run(ref_of(export_model, path=str(evil), name=str(evil)), "dynamic-int8", tmp_path / "store")
    assert not marker.exists()
    # Second line of defence: even without the archive scan, the forced weights-only load refuses it
    # (plain torch.export.load would retry with weights_only=False and run the payload).
    with pytest.raises(Exception), _weights_only_everywhere():
        torch.export.load(str(evil))
    assert not marker.exists()


def test_an_artifact_reloads_on_a_machine_without_the_workers_copies(export_model, tmp_path: Path) -> None:
    import shutil

    from modelpress.intake import localize_ref, stage_ref
    from modelpress.optimize.artifacts import load_artifact
    from modelpress.optimize.sources import ModelRef
    from modelpress.store import ArtifactStore
    from safetensors.torch import load_file

    store = ArtifactStore(tmp_path / "store")
    staged = stage_ref(ref_of(export_model), store=store, max_bytes=1 << 30)
    local = localize_ref(staged, store=store, cache_dir=tmp_path / "worker-cache")
    r = run(local, "static-int8", tmp_path / "results", stored_ref=staged.to_dict())
    x = load_file(str(export_model.eval))["features"][:16]
    measured = load_artifact(r.artifact_path).model(x)
    # "Another machine": the same store content under another root; the worker's paths are gone.
    shutil.copytree(tmp_path / "store", tmp_path / "other-store")
    shutil.rmtree(tmp_path / "store")
    shutil.rmtree(tmp_path / "worker-cache", ignore_errors=True)
    with pytest.raises(ModelLoadError, match="not found here"):
        load_artifact(r.artifact_path)
    other = ArtifactStore(tmp_path / "other-store")
    fetched = []

    def resolve(stored: dict) -> ModelRef:
        fetched.append(stored["path"])
        return localize_ref(ModelRef.from_dict(stored), store=other, cache_dir=tmp_path / "other-cache")

    again = load_artifact(r.artifact_path, resolve_ref=resolve).model(x)
    assert fetched == [staged.path] and torch.equal(measured, again)


# ----------------------------------------------------------------------------- the train split
def _tiny_export_data(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A tiny .pt2, its eval tensors (40 rows, labels) and a ref naming them."""
    from safetensors.torch import save_file

    from modelpress.optimize.sources import parse_model_ref
    from tests.optimize.sources.conftest import tiny_export

    program = tiny_export(tmp_path)
    torch.manual_seed(1)
    x = torch.randn(40, 4)
    save_file({"features": x, "labels": torch.arange(40) % 3}, str(tmp_path / "eval.safetensors"))
    ref = parse_model_ref(f"export:{program}", data={"eval": str(tmp_path / "eval.safetensors")}, latency_batches=(1,))
    return ref, x


def _with_train(ref, path: Path):  # type: ignore[no-untyped-def]
    return ref.with_paths(data={"eval": ref.data.eval, "train": str(path)})


def test_a_train_tensor_file_is_read_with_or_without_labels_and_its_eval_rows_are_dropped(tmp_path: Path) -> None:
    import numpy as np
    from safetensors.torch import save_file

    from modelpress.optimize.sources import get_source

    ref, x = _tiny_export_data(tmp_path)
    fresh = torch.randn(30, 4) + 10.0
    train = torch.cat([fresh, x[[0, 5, 39]]])
    save_file({"features": train, "labels": torch.arange(33) % 3}, str(tmp_path / "train.safetensors"))
    td = get_source("export").load(_with_train(ref, tmp_path / "train.safetensors")).spec.data()
    assert torch.equal(td.train_inputs, fresh) and td.train_labels.tolist() == (torch.arange(30) % 3).tolist()
    assert "train: 30 rows from train.safetensors, 3 also in the eval file dropped" in td.description
    np.savez(tmp_path / "unlabelled.npz", features=fresh.numpy())  # .npz, like eval files may be
    td = get_source("export").load(_with_train(ref, tmp_path / "unlabelled.npz")).spec.data()
    assert torch.equal(td.train_inputs, fresh) and td.train_labels is None
    assert "none also in the eval file" in td.description


def test_a_train_tensor_file_of_eval_rows_only_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from modelpress.optimize.sources import get_source

    ref, x = _tiny_export_data(tmp_path)
    save_file({"features": x[:8]}, str(tmp_path / "train.safetensors"))
    with pytest.raises(DataError, match="train data train.safetensors: all 8 of its rows are also in the eval data"):
        get_source("export").load(_with_train(ref, tmp_path / "train.safetensors"))


def test_a_train_label_outside_the_outputs_is_refused_naming_the_train_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from modelpress.optimize.sources import get_source

    ref, _ = _tiny_export_data(tmp_path)
    save_file({"features": torch.randn(4, 4) + 10, "labels": torch.tensor([0, 1, 3, 2])},
              str(tmp_path / "train.safetensors"))
    with pytest.raises(DataError, match="train.safetensors: label 3 in row 3 is outside the model's 3 classes"):
        get_source("export").load(_with_train(ref, tmp_path / "train.safetensors"))


def test_a_training_step_runs_on_an_exported_program_given_a_train_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    ref, x = _tiny_export_data(tmp_path)
    with pytest.raises(UserInputError, match=r"no training set; add data: \{train: \.\.\.\}"):
        run(ref, "qat-int8", tmp_path / "refused")
    save_file({"features": torch.cat([torch.randn(24, 4) + 3, x[:6]]), "labels": torch.arange(30) % 3},
              str(tmp_path / "train.safetensors"))
    r = run(_with_train(ref, tmp_path / "train.safetensors"), "qat-int8", tmp_path / "store", warmup=1, runs=3)
    assert r.status == "succeeded", r.reason
    assert r.steps_meta[0]["train_samples"] == 24  # the 6 eval rows were not trained on
    assert "6 also in the eval file dropped" in r.eval_description

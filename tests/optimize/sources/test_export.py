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

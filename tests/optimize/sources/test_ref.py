"""The model reference: parsing, JSON round trip, torch-free import, step support table."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modelpress.optimize.sources import DataRef, ModelRef, ModelRefError, parse_model_ref, unsupported_reason


def test_every_kind_parses_and_round_trips_through_json() -> None:
    refs = [
        parse_model_ref("hf:models/bert", data=DataRef(eval="e.jsonl", calibration="c.jsonl"), max_length=64),
        parse_model_ref("torchvision:resnet18", weights="r.safetensors", data={"eval": "imgs"},
                        preprocess={"resize": 64, "crop": 64}),
        parse_model_ref("timm:resnet18", weights="r.safetensors", data={"eval": "imgs"}),
        parse_model_ref("export:m.pt2", data={"eval": "x.npz"}, latency_batches=(1, 8)),
        parse_model_ref("mlp"),
        parse_model_ref("my.pkg:factory"),
    ]
    assert [r.kind for r in refs] == ["hf", "torchvision", "timm", "export", "registered", "registered"]
    for r in refs:
        d = r.to_dict()
        assert d["_version"] == 1
        assert ModelRef.from_dict(d) == r
        assert ModelRef.from_dict(__import__("json").loads(r.to_json())) == r


@pytest.mark.parametrize("text, fields, fragment", [
    ("torchvision:resnet18", {"data": {"eval": "x"}}, "needs a weights file"),
    ("hf:folder", {}, "needs data"),
    ("export:model.pt", {"data": {"eval": "x"}}, ".pt2"),
    ("timm:", {}, "nothing after"),
    ("", {}, "empty"),
])
def test_incomplete_references_are_refused_naming_what_is_missing(text: str, fields: dict, fragment: str) -> None:
    with pytest.raises(ModelRefError, match=fragment):
        parse_model_ref(text, **fields)


def test_unknown_fields_and_versions_are_refused() -> None:
    good = parse_model_ref("mlp").to_dict()
    with pytest.raises(ModelRefError, match="trust_remote_code"):
        ModelRef.from_dict({**good, "trust_remote_code": True})
    with pytest.raises(ModelRefError, match="version"):
        ModelRef.from_dict({**good, "_version": 99})


def test_sources_package_and_ref_import_without_torch() -> None:
    code = ("import sys, modelpress.optimize.sources as s; s.parse_model_ref('mlp'); "
            "s.unsupported_reason('export', 'qat'); assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_training_steps_and_structured_pruning_of_graphs_are_refused_with_a_reason() -> None:
    assert "training" in (unsupported_reason("hf", "finetune") or "")
    assert "graph" in (unsupported_reason("export", "prune_structured") or "")
    assert unsupported_reason("torchvision", "prune_structured") is None
    assert unsupported_reason("registered", "qat") is None


@pytest.mark.parametrize("kind", ["hf", "torchvision", "timm", "export"])
@pytest.mark.parametrize("step", ["finetune", "qat", "distill", "distill_float"])
def test_training_steps_run_on_a_users_model_only_with_a_train_file_and_the_refusal_says_how(kind, step) -> None:
    refusal = unsupported_reason(kind, step) or ""
    assert f"step {step!r} trains the model" in refusal and "add data: {train: ...}" in refusal
    assert unsupported_reason(kind, step, has_train=True) is None


def test_a_train_file_does_not_lift_the_structural_refusal_of_exported_graphs() -> None:
    assert "graph" in (unsupported_reason("export", "prune_structured", has_train=True) or "")


def test_a_train_file_is_part_of_the_reference_and_of_its_json() -> None:
    ref = parse_model_ref("hf:m", data={"eval": "e.jsonl", "train": "t.jsonl"})
    assert ref.has_train and ref.data.train == "t.jsonl"
    assert ModelRef.from_dict(ref.to_dict()) == ref
    assert not parse_model_ref("hf:m", data={"eval": "e.jsonl"}).has_train
    assert not parse_model_ref("mlp").has_train
    # A job row written before the train split (no "train" key) still reads.
    old = ref.to_dict()
    old["data"] = {"eval": "e.jsonl", "calibration": None}
    assert ModelRef.from_dict(old).data.train is None


def test_a_primary_output_is_only_for_an_exported_program_and_must_be_a_plain_name() -> None:
    import pytest

    from modelpress.optimize.sources import ModelRefError, parse_model_ref

    ref = parse_model_ref("export:face.pt2", data={"eval": "e.npz"}, primary_output="face")
    assert ref.primary_output == "face" and parse_model_ref(**{"text": "export:face.pt2"}, data={"eval": "e.npz"}
                                                            ).primary_output is None
    with pytest.raises(ModelRefError, match="primary_output is for an export"):
        parse_model_ref("hf:folder", data={"eval": "e.jsonl"}, primary_output="logits")
    with pytest.raises(ModelRefError, match="primary_output"):
        parse_model_ref("export:face.pt2", data={"eval": "e.npz"}, primary_output="face; rm -rf /")

"""The submit-time registry (``sources.submit``): every kind has its source's check; recipes a kind cannot take."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from modelpress.api import Producer
from modelpress.intake import IntakeError
from modelpress.optimize.sources.ref import SourceKind
from modelpress.optimize.sources.submit import SUBMIT_CHECKS
from modelpress.settings import Settings
from tests.tiny_model_files import pt2_file, safetensors_file


def test_every_kind_of_model_reference_has_a_submit_check():
    assert set(SUBMIT_CHECKS) == set(typing.get_args(SourceKind))


def test_steps_an_exported_graph_cannot_take_are_refused_at_submit_naming_the_recipe(tmp_path: Path):
    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'jobs.db'}")
    data = safetensors_file(tmp_path / "eval.safetensors", {"features": [2, 4]})
    producer = Producer(settings)
    try:
        with pytest.raises(IntakeError, match="recipe 'prune50-finetune': step 'prune_structured'"):
            producer.validate(model=f"export:{pt2_file(tmp_path / 'm.pt2')}", data=str(data),
                              recipe="prune50-finetune", backend="fbgemm")
        req = producer.validate(model="export:m.pt2", data={"eval": "eval.safetensors"}, recipe="static-int8",
                                backend="fbgemm", base_dir=tmp_path)
    finally:
        producer.close()
    assert req.model == "export:m.pt2" and req.ref is not None and req.ref.path == str(tmp_path / "m.pt2")


def _own_model(kind: str, root: Path) -> tuple[str, dict, str | None]:
    """(model, data with eval and train, weights) of tiny stand-in files for a model of ``kind``."""
    from tests.tiny_model_files import hf_folder

    if kind == "hf":
        for name in ("eval", "train"):
            (root / f"{name}.jsonl").write_text('{"text": "goal", "label": "sports"}\n')
        return f"hf:{hf_folder(root)}", {"eval": "eval.jsonl", "train": "train.jsonl"}, None
    if kind == "torchvision":
        for name in ("eval", "train"):
            (root / name).mkdir()
            (root / name / "a.png").write_bytes(b"not decoded at submit")
        weights = safetensors_file(root / "w.safetensors", {"fc.weight": [4, 8], "fc.bias": [4]})
        return "torchvision:resnet18", {"eval": "eval", "train": "train"}, str(weights)
    for name in ("eval", "train"):
        safetensors_file(root / f"{name}.safetensors", {"features": [2, 4]})
    return f"export:{pt2_file(root / 'm.pt2')}", {"eval": "eval.safetensors", "train": "train.safetensors"}, None


@pytest.mark.parametrize("kind", ["hf", "torchvision", "export"])
def test_a_training_step_is_refused_at_submit_without_a_train_file_and_accepted_with_one(tmp_path: Path, kind: str):
    from modelpress.optimize.recipes import Recipe

    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'jobs.db'}")
    model, data, weights = _own_model(kind, tmp_path)
    finetune = Recipe.from_dict({"name": "tune", "steps": [{"type": "finetune", "epochs": 1}]})
    producer = Producer(settings)
    try:
        for recipe in (finetune, "qat-int8"):
            with pytest.raises(IntakeError, match=r"trains the model, and this \w+ model comes with no training set; "
                                                  r"add data: \{train: \.\.\.\}"):
                producer.validate(model=model, weights=weights, data={"eval": data["eval"]}, recipe=recipe,
                                  backend="fbgemm", base_dir=tmp_path)
            req = producer.validate(model=model, weights=weights, data=data, recipe=recipe, backend="fbgemm",
                                    base_dir=tmp_path)
            assert req.ref is not None and req.ref.data.train == str(tmp_path / data["train"])
    finally:
        producer.close()

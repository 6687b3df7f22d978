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

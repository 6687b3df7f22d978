"""The three own models of issue 9, built once per test module (seconds to a minute each)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.own_models_fixtures import Built


def ref_of(b: Built, **over):  # type: ignore[no-untyped-def]
    from modelpress.optimize.sources import parse_model_ref

    fields = {"weights": str(b.weights) if b.weights else None, "preprocess": b.preprocess,
              "data": {"eval": str(b.eval), "calibration": str(b.calibration) if b.calibration else None}}
    fields.update(over)
    return parse_model_ref(b.model, **fields)


def run(ref, recipe: str, store: Path, **kw):  # type: ignore[no-untyped-def]
    from modelpress.optimize import optimize_model, resolve_recipe

    kw.setdefault("warmup", 2)
    kw.setdefault("runs", 5)
    return optimize_model(model_ref=ref, recipe=resolve_recipe(recipe), engine="fbgemm", store=store, **kw)


@pytest.fixture(scope="module")
def export_model(tmp_path_factory: pytest.TempPathFactory) -> Built:
    from tests.own_models_fixtures import build_export

    return build_export(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory: pytest.TempPathFactory) -> Built:
    from modelpress.optimize.sources.vision import import_torchvision
    from tests.own_models_fixtures import build_hf_classifier

    import_torchvision()  # transformers imports torchvision; the registry's build needs the shim
    return build_hf_classifier(tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> Built:
    from modelpress.optimize.sources.vision import import_torchvision
    from tests.own_models_fixtures import build_resnet18

    import_torchvision()
    return build_resnet18(tmp_path_factory.mktemp("resnet"))

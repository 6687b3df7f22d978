"""The torch-free architecture lists submit checks names against match the installed torchvision and timm."""

from __future__ import annotations

from modelpress.optimize.sources import architecture_names
from modelpress.optimize.sources.submit_vision import architecture_names as names_for

REGENERATE = ("regenerate src/modelpress/optimize/sources/architecture_names.py from torchvision.models.list_models("
              "module=torchvision.models) and timm.list_models()")


def test_the_static_torchvision_list_is_exactly_the_installed_classification_models():
    from tests.own_models_fixtures import import_torchvision

    import_torchvision()
    import torchvision

    installed = tuple(sorted(torchvision.models.list_models(module=torchvision.models)))
    assert architecture_names.TORCHVISION == installed, REGENERATE
    assert names_for("torchvision") is architecture_names.TORCHVISION


def test_the_static_timm_list_is_exactly_the_installed_timm_models():
    import timm

    assert architecture_names.TIMM == tuple(sorted(timm.list_models())), REGENERATE
    assert "resnet18" in names_for("timm") and "vit_base_patch16_224" in names_for("timm")

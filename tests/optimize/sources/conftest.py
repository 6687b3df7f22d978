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


# ----------------------------------------------------------------------------- tiny models for the train split
# Untrained and built in about a second: the train-split tests check what is read, not what is learnt.
def tiny_export(root: Path) -> Path:
    """``root/m.pt2``: a 4 → 3 MLP exported with a dynamic batch; its forward takes ``features``."""
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return self.body(features)

    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(Tiny().eval(), (torch.zeros(2, 4),), dynamic_shapes={"features": {0: batch}})
    path = root / "m.pt2"
    torch.export.save(program, str(path))
    return path


def tiny_bert(root: Path) -> Path:
    """A random 1-layer BERT classifier (3 classes, labels LABEL_0..2) with its tokenizer, ``max_length`` 16."""
    from modelpress.optimize.sources.vision import import_torchvision
    from tests.bad_input.test_hostile_hf_folders import build_tiny_bert

    import_torchvision()  # transformers imports torchvision; the registry's build needs the shim
    return build_tiny_bert(root / "bert")


def tiny_resnet_weights(root: Path, classes: int = 3) -> Path:
    """Random torchvision ResNet-18 weights with ``classes`` outputs, as a .safetensors file."""
    import torch
    from safetensors.torch import save_file

    from modelpress.optimize.sources.vision import import_torchvision

    torch.manual_seed(0)
    model = import_torchvision().models.resnet18(num_classes=classes)
    path = root / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path

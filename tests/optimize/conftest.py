"""Fixtures for the torch-layer tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread: None) -> None:
    """Every test module here runs torch on one thread (``one_torch_thread``, tests/conftest.py)."""


@pytest.fixture(scope="module")
def digits():
    """(spec, data, model): a DigitsCNN trained 3 epochs (≈97 % held out): real weights in seconds."""
    from modelpress.zoo.models import DigitsCNN, digits_cnn_spec, train_classifier

    spec = digits_cnn_spec()
    data = spec.data()
    torch.manual_seed(0)
    model = train_classifier(DigitsCNN(), data.train_inputs, data.train_labels, epochs=3, seed=0)
    return spec, data, model


@pytest.fixture(scope="module")
def mlp():
    """(spec, data, model): the seed MLP with its built-in (seeded) weights."""
    from modelpress.zoo.models import mlp_spec

    spec = mlp_spec()
    model = spec.build()
    spec.pretrained(model, None)
    return spec, spec.data(), model.eval()

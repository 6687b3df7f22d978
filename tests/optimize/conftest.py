"""Fixtures for the torch-layer tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Module scope: it must be in force before the module-scoped fixtures that train or load models
    # (two OpenMP threads on two shared cores ran training several times slower).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def builtin_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The cache_dir handed to materialize, shared by every test file of the session. Nothing is trained or
    # written here any more: built-ins load weights shipped as package data (digits_cnn, seq_lstm, seq_gru) or
    # draw them from a seed (mlp) (test_builtin_weights checks that nothing lands in a cache dir).
    return tmp_path_factory.getbasetemp() / "builtin-cache"


@pytest.fixture(scope="module")
def digits():
    """(spec, data, model): a DigitsCNN trained 3 epochs (≈97 % held out): real weights in seconds."""
    from modelpress.optimize.zoo import DigitsCNN, digits_cnn_spec, train_classifier

    spec = digits_cnn_spec()
    data = spec.data()
    torch.manual_seed(0)
    model = train_classifier(DigitsCNN(), data.train_inputs, data.train_labels, epochs=3, seed=0)
    return spec, data, model


@pytest.fixture(scope="module")
def mlp():
    """(spec, data, model): the seed MLP with its built-in (seeded) weights."""
    from modelpress.optimize.zoo import mlp_spec

    spec = mlp_spec()
    model = spec.build()
    spec.pretrained(model, None)
    return spec, spec.data(), model.eval()

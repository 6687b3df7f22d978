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
    # Shared by every test file of the session: each built-in model is trained once.
    return tmp_path_factory.getbasetemp() / "builtin-cache"

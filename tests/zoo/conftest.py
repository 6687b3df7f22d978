"""Fixtures for the zoo tests (the shared ones, ``builtin_cache`` and ``one_torch_thread``, are in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread: None) -> None:
    """Every test module here runs torch on one thread (``one_torch_thread``, tests/conftest.py)."""

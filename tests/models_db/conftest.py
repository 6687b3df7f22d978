"""Shared by the job-table tests: a session factory on a migrated database (SQLite and PostgreSQL, ``db_url``)."""

from __future__ import annotations

import pytest

from modelpress.models_db import make_engine, make_sessionmaker, migrate


@pytest.fixture
def sessions(db_url):  # type: ignore[no-untyped-def]
    migrate.upgrade(db_url)
    eng = make_engine(db_url)
    yield make_sessionmaker(eng)
    eng.dispose()

"""Alembic migrations upgrade and downgrade on SQLite and PostgreSQL, and match the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from modelpress.models_db import Base, make_engine
from modelpress.models_db import migrate


def test_migrations_upgrade_downgrade_and_upgrade_again(db_url):
    migrate.upgrade(db_url)
    eng = make_engine(db_url)
    assert {"jobs", "batches"} <= set(inspect(eng).get_table_names())
    assert migrate.current(db_url) is not None
    migrate.downgrade(db_url, "base")
    assert "jobs" not in inspect(eng).get_table_names()
    assert migrate.current(db_url) is None
    migrate.upgrade(db_url)
    assert "jobs" in inspect(eng).get_table_names()
    eng.dispose()


def test_the_migrated_schema_has_no_difference_from_the_models(db_url):
    migrate.upgrade(db_url)
    eng = make_engine(db_url)
    with eng.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    eng.dispose()
    assert diff == []

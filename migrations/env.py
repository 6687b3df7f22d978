"""Alembic environment: URL from modelpress settings, metadata from modelpress.models_db."""

from __future__ import annotations

from alembic import context

from modelpress.models_db import Base, make_engine
from modelpress.settings import Settings

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    # `modelpress db upgrade` passes the URL of the Settings it was given; plain `alembic` reads the env.
    return config.attributes.get("url") or Settings().effective_database_url


def run_migrations_offline() -> None:
    url = _url()
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, compare_type=True,
                      render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    # SQLite cannot ALTER most things in place: batch mode recreates tables (field notes).
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

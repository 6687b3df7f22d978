"""Run Alembic migrations for a given database URL (``modelpress db upgrade``).

Example:
    >>> upgrade("sqlite:///" + __import__("tempfile").mkdtemp() + "/doc.db")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config


def migrations_dir() -> Path:
    env = os.environ.get("MODELPRESS_MIGRATIONS_DIR")
    if env:
        return Path(env)
    # Source checkout / editable install: <root>/src/modelpress/models_db/migrate.py → <root>/migrations
    here = Path(__file__).resolve().parents[3] / "migrations"
    if here.is_dir():
        return here
    raise RuntimeError("cannot find the migrations folder; set MODELPRESS_MIGRATIONS_DIR")


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def current(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from modelpress.models_db.engine import make_engine

    eng = make_engine(url)
    try:
        with eng.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        eng.dispose()

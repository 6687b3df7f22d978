"""PostgreSQL connections carry timeouts, so a hung database or a stuck lock fails a statement instead of stalling."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from modelpress.models_db import create_job, make_engine, make_sessionmaker, migrate
from modelpress.settings import Settings
from tests.conftest import fresh_pg_database


def test_postgresql_sessions_give_up_on_a_locked_row_after_the_lock_timeout_instead_of_waiting():
    with fresh_pg_database("mp_eng") as url:
        migrate.upgrade(url)
        options = Settings(home="/tmp/mp-doc", db_lock_timeout=0.5, db_statement_timeout=7).db_engine_options()
        engine = make_engine(url, **options)
        other = make_engine(url)
        try:
            with engine.connect() as c:
                assert c.scalar(text("SHOW lock_timeout")) == "500ms"
                assert c.scalar(text("SHOW statement_timeout")) == "7s"
            with make_sessionmaker(engine)() as s:
                job_id = create_job(session=s, model_name="mlp", recipe_name="r", recipe_json="{}",
                                    recipe_sha256="0" * 64, backend="fbgemm").id
            with other.connect() as holder:
                holder.execute(text("SELECT 1 FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})
                started = time.monotonic()
                with pytest.raises(OperationalError, match="lock timeout"), engine.connect() as c:
                    c.execute(text("UPDATE jobs SET error = 'x' WHERE id = :id"), {"id": job_id})
                assert time.monotonic() - started < 5
                holder.rollback()
        finally:
            engine.dispose()
            other.dispose()

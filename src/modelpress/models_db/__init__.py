"""Schema and data functions for the job table (SQLAlchemy 2.x). No torch, no Celery.

What lives here: ``schema`` (the ``Job`` and ``Batch`` tables, ``JobStatus``), ``engine`` (engines and
sessions for SQLite and PostgreSQL), ``jobs`` (keyword-only data functions, each a conditional UPDATE),
``clock`` (the database server's clock as SQL expressions) and ``migrate`` (Alembic upgrades).

What it may import: SQLAlchemy, Alembic and its own modules. No other ``modelpress`` module: it is the
bottom layer that the API, the tasks, the reconciler and the CLI all build on.

Example:
    >>> from modelpress.models_db import make_engine, create_all
    >>> create_all(make_engine("sqlite://"))
"""

from sqlalchemy import Engine

from modelpress.models_db.engine import make_engine, make_sessionmaker
from modelpress.models_db.jobs import (
    claim_job,
    count_by_status,
    create_job,
    fail_job,
    finish_job,
    get_job,
    heartbeat,
    is_finished,
    list_jobs,
    record_progress,
    requeue_job,
)
from modelpress.models_db.schema import FINISHED, Base, Batch, Job, JobStatus


def create_all(engine: Engine) -> None:
    """Create tables directly (tests of the data functions; real deployments use migrations)."""
    Base.metadata.create_all(engine)


__all__ = ["Base", "Batch", "FINISHED", "Job", "JobStatus", "claim_job", "count_by_status", "create_all",
           "create_job", "fail_job", "finish_job", "get_job", "heartbeat", "is_finished",
           "list_jobs", "make_engine", "make_sessionmaker", "record_progress", "requeue_job"]

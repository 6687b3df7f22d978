"""Engines and sessions for SQLite (embedded default) and PostgreSQL (psycopg 3).

Example:
    >>> eng = make_engine("sqlite://")
    >>> eng.dialect.name
    'sqlite'
"""

from __future__ import annotations

import os

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


# Defaults for PostgreSQL (seconds): a hung or unreachable server must not stall a worker's parent,
# a heartbeat or the beat lease for ever. Settings override them (MODELPRESS_DB_*_TIMEOUT).
CONNECT_TIMEOUT_S = 10.0
STATEMENT_TIMEOUT_S = 120.0
LOCK_TIMEOUT_S = 30.0


def make_engine(url: str, *, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                statement_timeout_s: float = STATEMENT_TIMEOUT_S, lock_timeout_s: float = LOCK_TIMEOUT_S) -> Engine:
    """An engine tuned for many processes sharing one job table.

    On PostgreSQL every connection gets ``connect_timeout``, ``statement_timeout`` and ``lock_timeout``:
    a statement that waits longer (a server that hangs, a row locked by a stuck session) fails with an
    ``OperationalError`` that callers treat as transient, instead of blocking. 0 turns one off.

    Example:
        >>> make_engine("postgresql://u@db/x", lock_timeout_s=5).dialect.name
        'postgresql'
    """
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets readers (CLI, progress bars) run while a worker writes; busy_timeout makes
            # concurrent writers wait instead of failing with "database is locked".
            cur = dbapi_conn.cursor()
            if u.database and u.database != ":memory:":
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if u.drivername == "postgresql":
        # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3 already; be explicit for 2.0.
        u = u.set(drivername="postgresql+psycopg")
    options = f"-c statement_timeout={int(statement_timeout_s * 1000)} -c lock_timeout={int(lock_timeout_s * 1000)}"
    connect_args: dict[str, object] = {"options": options}
    if connect_timeout_s:
        connect_args["connect_timeout"] = max(1, int(round(connect_timeout_s)))  # libpq: whole seconds, ≥ 1
    return create_engine(u, pool_pre_ping=True, connect_args=connect_args)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


_PROCESS_SESSIONS: dict[tuple[int, str], sessionmaker[Session]] = {}


def process_sessionmaker(url: str, **engine_options: float) -> sessionmaker[Session]:
    """One engine per (process, URL), made on first use: a pooled connection must never cross a fork.

    ``engine_options`` (the timeouts of ``make_engine``) apply when the engine is made.

    Example:
        >>> process_sessionmaker("sqlite://") is process_sessionmaker("sqlite://")
        True
    """
    key = (os.getpid(), url)
    if key not in _PROCESS_SESSIONS:
        _PROCESS_SESSIONS[key] = make_sessionmaker(make_engine(url, **engine_options))
    return _PROCESS_SESSIONS[key]


def dispose_process_sessionmakers(url: str) -> None:
    """Close this process's pooled connections to ``url`` (before dropping a database, in tests)."""
    for key in [k for k in _PROCESS_SESSIONS if k[1] == url]:
        _PROCESS_SESSIONS.pop(key).kw["bind"].dispose()

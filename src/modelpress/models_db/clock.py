"""The database's clock, as SQL expressions: the one clock every host shares.

Heartbeats, staleness, grace periods and leases compare times written by one host with times read
by another. Each host's ``utcnow()`` drifts (a reconciler whose clock ran a minute ahead requeued every
live job), so those times are written *and* compared in SQL with the database server's clock.

- PostgreSQL: ``statement_timestamp()`` (the start of the statement; ``now()`` is the start of the
  transaction, which may be older in a long session).
- SQLite: ``strftime('%Y-%m-%d %H:%M:%f', 'now')``, UTC text in the very format SQLAlchemy stores
  ``DateTime`` values in, so text comparison orders them correctly (``CURRENT_TIMESTAMP`` drops the
  fraction of a second).

Example:
    >>> from sqlalchemy import select
    >>> from modelpress.models_db import make_engine
    >>> with make_engine("sqlite://").connect() as c:
    ...     isinstance(c.scalar(select(db_now())), str)
    True
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import DateTime, literal
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement


class db_now(FunctionElement[Any]):  # noqa: N801 - reads like the SQL function it stands for
    """The database server's current UTC time.

    Example:
        >>> update(Job).values(heartbeat_at=db_now())  # doctest: +SKIP
    """

    type = DateTime(timezone=True)
    inherit_cache = True


class db_now_plus(FunctionElement[Any]):  # noqa: N801
    """The database server's current time shifted by ``seconds`` (negative: in the past).

    Example:
        >>> select(Job).where(Job.heartbeat_at < db_now_plus(-60))  # doctest: +SKIP
    """

    type = DateTime(timezone=True)
    inherit_cache = True

    def __init__(self, seconds: float) -> None:
        super().__init__(literal(float(seconds)))


@compiles(db_now)
def _now_default(element: db_now, compiler: Any, **kw: Any) -> str:
    return "statement_timestamp()"


@compiles(db_now, "sqlite")
def _now_sqlite(element: db_now, compiler: Any, **kw: Any) -> str:
    # '%f' is seconds with milliseconds ("SS.SSS"): same layout as SQLAlchemy's stored text.
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"


@compiles(db_now_plus)
def _plus_default(element: db_now_plus, compiler: Any, **kw: Any) -> str:
    (arg,) = element.clauses
    return f"(statement_timestamp() + make_interval(secs => {compiler.process(arg, **kw)}))"


@compiles(db_now_plus, "sqlite")
def _plus_sqlite(element: db_now_plus, compiler: Any, **kw: Any) -> str:
    (arg,) = element.clauses
    # A modifier like '-60.0 seconds' (SQLite accepts a fraction; a leading '+' is optional).
    return f"strftime('%Y-%m-%d %H:%M:%f', 'now', ({compiler.process(arg, **kw)}) || ' seconds')"

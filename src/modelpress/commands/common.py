"""What the ``modelpress`` command and its subcommand modules share. No torch, no import of ``cli``.

It lives here, below both, so that ``cli`` imports ``commands`` and never the other way round (the
import circle ``cli`` ↔ ``commands.batches`` of issue 9).

Example:
    >>> from modelpress.settings import Settings
    >>> ensure_db(Settings(home="/tmp/mp-doc-common"))  # doctest: +SKIP
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelpress.settings import Settings


def ensure_db(settings: "Settings") -> None:
    """The embedded SQLite database upgrades itself; a server database is migrated explicitly."""
    if settings.effective_database_url.startswith("sqlite"):
        settings.home.mkdir(parents=True, exist_ok=True)
        from modelpress.models_db.migrate import upgrade

        upgrade(settings.effective_database_url)


def refuse_or_warn(settings: "Settings", command: str, *, embedded: bool) -> int | None:
    """Checks before a long-running process starts: 2 (after printing why) if it must not, else None.

    Refuses the embedded default (no MODELPRESS_BROKER_URL / _DATABASE_URL) unless ``--embedded`` was
    given; warns, on stderr, about secrets still set to an example value.

    Example:
        >>> from modelpress.settings import Settings
        >>> refuse_or_warn(Settings(home="/tmp/mp-doc"), "worker", embedded=True)
    """
    for warning in settings.placeholder_secrets():
        print(f"warning: {warning}", file=sys.stderr)
    problem = None if embedded else settings.embedded_refusal(command)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return None


__all__ = ["ensure_db", "refuse_or_warn"]

"""What the ``modelpress`` command and its subcommand modules share. No torch, no import of ``cli``.

It lives here, below both, so that ``cli`` imports ``commands`` and never the other way round (the
import circle ``cli`` ↔ ``commands.batches`` of issue 9).

Example:
    >>> from modelpress.settings import Settings
    >>> ensure_db(Settings(home="/tmp/mp-doc-common"))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelpress.settings import Settings


def ensure_db(settings: "Settings") -> None:
    """The embedded SQLite database upgrades itself; a server database is migrated explicitly."""
    if settings.effective_database_url.startswith("sqlite"):
        settings.home.mkdir(parents=True, exist_ok=True)
        from modelpress.models_db.migrate import upgrade

        upgrade(settings.effective_database_url)


__all__ = ["ensure_db"]

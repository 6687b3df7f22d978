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


def refuse_or_warn(settings: "Settings", command: str, *, embedded: bool,
                   allow_example_passwords: bool = False) -> int | None:
    """Checks before a long-running process starts: 2 (after printing why) if it must not, else None.

    Refuses secrets still set to an example value (``.env.example``, the docs) unless
    ``--allow-example-passwords`` / ``MODELPRESS_ALLOW_EXAMPLE_PASSWORDS=1`` says this is a demo (then it
    warns), and the embedded default (no MODELPRESS_BROKER_URL / _DATABASE_URL) unless ``--embedded``.
    Each refusal is one line on stderr naming the variable, never its value.

    Example:
        >>> from modelpress.settings import Settings
        >>> refuse_or_warn(Settings(home="/tmp/mp-doc"), "worker", embedded=True)
    """
    allowed = allow_example_passwords or settings.allow_example_passwords
    refusal = None if allowed else settings.example_password_refusal(command)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    for warning in settings.placeholder_secrets():
        print(f"warning: {warning} (allowed by --allow-example-passwords)", file=sys.stderr)
    problem = None if embedded else settings.embedded_refusal(command)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return None


EXAMPLE_PASSWORDS_HELP = ("start even though a password is an example value (.env.example's, the docs'): for a "
                          "throwaway demo only (MODELPRESS_ALLOW_EXAMPLE_PASSWORDS=1)")


__all__ = ["EXAMPLE_PASSWORDS_HELP", "ensure_db", "refuse_or_warn"]

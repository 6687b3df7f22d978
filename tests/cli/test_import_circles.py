"""The command modules sit below ``modelpress.cli``: none of them imports it back (issue 9)."""

from __future__ import annotations

import ast
from pathlib import Path

import modelpress.commands

COMMANDS = Path(modelpress.commands.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_no_command_module_imports_the_cli_module_that_loads_it():
    offenders = {p.name: sorted(m for m in _imported_modules(p) if m == "modelpress.cli")
                 for p in COMMANDS.glob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}
    # The scan itself must see the command modules' real imports, or the check above proves nothing.
    assert "modelpress.commands.common" in _imported_modules(COMMANDS / "batches.py")


def test_the_cli_still_offers_ensure_db_to_its_callers():
    from modelpress import cli
    from modelpress.commands.common import ensure_db

    assert cli.ensure_db is ensure_db

"""Where the fault and bad-input tests leave their numbers for ``docs/faults.md`` (see ``make_table.py``).

Nothing is written unless ``MP_FAULTS_RECORD`` names a file: a normal test run leaves no trace.

Example:
    >>> record("bad_input", case="truncated weights", stage="submit", error="...")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from typing import Any


def record(kind: str, **data: Any) -> None:
    """Append one JSON line ``{"kind", "test", **data}`` to ``$MP_FAULTS_RECORD`` (if set)."""
    path = os.environ.get("MP_FAULTS_RECORD")
    if not path:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"kind": kind, "test": test, **data}, default=str) + "\n")


def record_outcome(report: Any) -> None:
    """A ``pytest_runtest_logreport`` hook body: the outcome of each test's call phase."""
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        record("outcome", nodeid=report.nodeid, outcome=report.outcome)

"""A model factory module that must never be imported by a worker that does not allow-list it.

Importing it creates the file named by ``MP_EVIL_MARKER``: a test proves a refused factory was
refused *before* its module ran, by that file's absence.
"""

import os
from pathlib import Path

_marker = os.environ.get("MP_EVIL_MARKER")
if _marker:
    Path(_marker).write_text("imported\n")


def spec():  # pragma: no cover - never reached: the import itself is the payload
    raise RuntimeError("evil factory called")

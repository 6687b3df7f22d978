"""Which code builds and measures an artifact, as one hash; importable without torch.

The worker puts it in every artifact key and on every job row; the producer compares it with its own
before it hands out an old row instead of running a job (``find_reusable_job``), so after a fleet upgrades,
nothing built by the old code is served as the new code's answer.

Example:
    >>> len(build_fingerprint())
    64
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path


@functools.lru_cache(maxsize=None)
def build_fingerprint() -> str:
    """sha256 over the source of ``modelpress.optimize`` (every ``.py`` file, by relative path).

    Any change to the code that builds and measures an artifact gives a new value; unchanged code on another
    host gives the same one. Coarse on purpose: a comment edit costs one rebuild, a missed change would
    hand out an artifact the new code would not build.

    Example:
        >>> build_fingerprint() == build_fingerprint()
        True
    """
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()

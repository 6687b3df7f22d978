"""Who may read what modelpress writes: the service's user and group, nobody else (issue 20 item 6).

Staged inputs are the users' models and data, artifacts are what was built from them: other local users
must not read them. Every file modelpress puts into the artifact store or a worker's cache is made
``FILE_MODE`` (0640) and every folder it creates there ``DIR_MODE`` (0750), *set explicitly* after
creation: ``mkdir``'s and ``open``'s modes are filtered through the umask, which whoever started the
process may have left at 0000. Folders that already exist keep their mode (an operator may have made a
shared store group-writable on purpose). ``PROCESS_UMASK`` (0027) is what ``modelpress`` processes run
with, so anything else they create (logs, the SQLite file, the broker's folders) is private as well.

Torch-free and import-free: the producer, the store and the torch layer all use it.

Example:
    >>> import tempfile, pathlib, stat
    >>> d = make_private_dirs(pathlib.Path(tempfile.mkdtemp()) / "a" / "b")
    >>> oct(stat.S_IMODE(d.stat().st_mode))
    '0o750'
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o640
DIR_MODE = 0o750
PROCESS_UMASK = 0o027


def make_private_dirs(path: str | os.PathLike[str], mode: int = DIR_MODE) -> Path:
    """``mkdir -p`` where every folder it creates gets exactly ``mode``; existing ones are left alone.

    A folder another process creates at the same moment is accepted (its creator sets its mode).

    Example:
        >>> import tempfile
        >>> make_private_dirs(tempfile.mkdtemp()).is_dir()
        True
    """
    target = Path(path)
    missing: list[Path] = []
    p = target
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, mode)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue
        os.chmod(folder, mode)
    return target


def make_private_file(path: str | os.PathLike[str], mode: int = FILE_MODE) -> None:
    """Give a file modelpress just wrote exactly ``mode`` (call before renaming it into place).

    Example:
        >>> import tempfile, stat
        >>> f = tempfile.mktemp(); _ = open(f, "w").write("x"); make_private_file(f)
        >>> oct(stat.S_IMODE(os.stat(f).st_mode))
        '0o640'
    """
    os.chmod(path, mode)


def set_process_umask() -> int:
    """Run this process (and the children it forks) with ``PROCESS_UMASK``; returns the previous mask.

    Example:
        >>> old = set_process_umask(); _ = os.umask(old)
    """
    return os.umask(PROCESS_UMASK)


__all__ = ["DIR_MODE", "FILE_MODE", "PROCESS_UMASK", "make_private_dirs", "make_private_file", "set_process_umask"]

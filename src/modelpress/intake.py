"""Own models and data at submit (issue 9): paths made relative, files staged into the store, the reuse key.

A user names a model file or folder plus data files (eval, optionally calibration and train; ``hf:PATH``,
``torchvision:NAME`` + weights, ``timm:NAME`` + weights, ``export:PATH.pt2``; see ``optimize.sources.ref``).
Before any row exists:

1. ``resolve_paths`` makes every path absolute (relative to the manifest's folder or the shell's) for
   reading the files here, and renames the model relative to that folder: a job row never holds the
   submitter's absolute paths (issue 20 item 6);
2. each source checks its own files without torch (``optimize.sources.submit.check_ref`` dispatches to
   ``submit_hf``, ``submit_vision``, ``submit_export``, ``submit_registered``); the producer raises
   ``IntakeError`` with every (field, message) found, so a manifest can point at the line;
3. ``stage_ref`` puts every file into the artifact store, content-addressed (a folder becomes a small
   index object, ``ArtifactStore.put_tree``), and returns the ref the job row stores, with its
   ``content_sha256``: the model part of the reuse key (``content_id``, ``source_version``).

On the worker, ``localize_ref`` turns the stored ref back into local, hash-checked paths, and
``name_staged_files`` names those files by their role in an error message.

No torch, transformers or torchvision import here: submitting stays cheap.

Example:
    >>> from modelpress.optimize.sources import parse_model_ref
    >>> resolve_paths(parse_model_ref("export:models/m.pt2", data={"eval": "d.npz"}), "/srv/team").name
    'models/m.pt2'
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelpress.errors import UserInputError
from modelpress.zoo.builtin_weights import builtin_content_id, module_source_sha256

if TYPE_CHECKING:
    from modelpress.optimize.sources import ModelRef
    from modelpress.optimize.sources.data_checks import Problem
    from modelpress.store import ArtifactStore

# Which modules of optimize/sources make up each kind's code: their bytes join the reuse key, so a
# changed loader or reader never reuses results measured with the old one.
_SOURCE_MODULES = {"hf": ("hf", "data", "base"), "torchvision": ("vision", "data", "base"),
                   "timm": ("vision", "data", "base"), "export": ("export", "data", "base"),
                   "registered": ("registered", "data", "base")}
_SOURCE_PACKAGES = {"hf": ("transformers", "tokenizers"), "torchvision": ("torchvision", "pillow"),
                    "timm": ("timm", "torchvision", "pillow"), "export": (), "registered": ()}


class IntakeError(UserInputError):
    """A model reference refused at submit; ``problems`` keeps each (field, message) pair."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(loc)}: {msg}" if loc else msg for loc, msg in problems))


# ----------------------------------------------------------------------------- paths
def resolve_paths(ref: "ModelRef", base_dir: str | Path) -> "ModelRef":
    """The same ref with ``path``, ``weights`` and data files absolute (relative ones under ``base_dir``).

    The absolute paths are for reading the files at submit only: ``stage_ref`` replaces each by a store
    key. The ref's ``name`` (an ``hf:``/``export:`` model's path, which the job row keeps) becomes
    ``row_name``'s: relative to ``base_dir``, never the submitter's absolute path.

    Example:
        >>> from modelpress.optimize.sources import parse_model_ref
        >>> ref = resolve_paths(parse_model_ref("export:/srv/team/m.pt2", data={"eval": "d.npz"}), "/srv/team")
        >>> ref.path, ref.data.eval, ref.name
        ('/srv/team/m.pt2', '/srv/team/d.npz', 'm.pt2')
    """
    base = Path(base_dir).expanduser()

    def absolute(p: str | None) -> str | None:
        if p is None:
            return None
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (base / q).absolute())

    fields: dict[str, Any] = {"path": absolute(ref.path), "weights": absolute(ref.weights)}
    if ref.data is not None:
        fields["data"] = {"eval": absolute(ref.data.eval), "calibration": absolute(ref.data.calibration),
                          "train": absolute(ref.data.train)}
    if ref.kind in ("hf", "export"):
        fields["name"] = row_name(ref.name, base)
    return ref.with_paths(**fields)


def row_name(path: str, base_dir: str | Path) -> str:
    """How a job row names a file the submitter gave: its path relative to ``base_dir`` (the manifest's
    folder, or the working directory for ``--model``), or just its own name when it lies outside.

    Rows are read by everyone who can list jobs; where a submitter keeps files (``/home/alice/...``) is
    not theirs to know, and it means nothing on the worker, which reads the store.

    Example:
        >>> row_name("/home/alice/team/models/x", "/home/alice/team"), row_name("/data/shared/y/", "/home/alice")
        ('models/x', 'y')
    """
    base = os.path.abspath(os.path.expanduser(str(base_dir)))
    full = os.path.abspath(os.path.join(base, os.path.expanduser(path)))
    for b, f in ((base, full), (os.path.realpath(base), os.path.realpath(full))):
        rel = os.path.relpath(f, b)
        if rel != "." and rel != ".." and not rel.startswith("../"):
            return Path(rel).as_posix()
    return Path(full).name or "model"


# ----------------------------------------------------------------------------- staging
def stage_ref(ref: "ModelRef", *, store: "ArtifactStore", max_bytes: int, prefix: str = "inputs") -> "ModelRef":
    """Put every file the ref names into ``store`` (content-addressed) and return the ref a job row keeps.

    Files become ``<prefix>/<sha256><suffix>`` keys, folders (an HF model, an image folder) a
    ``<prefix>/<sha256>.tree.json`` index; ``content_sha256`` is set (``content_id``). Staging the same
    files twice writes nothing the second time.

    Example:
        >>> staged = stage_ref(resolve_paths(ref, "team/"), store=ArtifactStore("/srv/store"),
        ...                    max_bytes=1 << 31)  # doctest: +SKIP
        >>> staged.path  # doctest: +SKIP
        'inputs/3f…e1.tree.json'
    """

    def put(p: str | None) -> str | None:
        if p is None:
            return None
        path = Path(p)
        if path.is_dir():
            return store.put_tree(path, prefix=prefix, max_bytes=max_bytes).key
        return store.put_file(path, prefix=prefix).key

    fields: dict[str, Any] = {"path": put(ref.path), "weights": put(ref.weights)}
    if ref.data is not None:
        fields["data"] = {"eval": put(ref.data.eval), "calibration": put(ref.data.calibration),
                          "train": put(ref.data.train)}
    staged = ref.with_paths(**fields)
    return staged.with_paths(content_sha256=content_id(staged))


def content_id(staged: "ModelRef") -> str:
    """The model part of the reuse key: sha256 over the staged files' content keys, the source kind and
    name, the measuring options and the version of the code that reads them (``source_version``).

    Two refs with the same files and options share it wherever the files were on the user's disk;
    another architecture name over the same weights, another data file, or a changed loader does not.

    Example:
        >>> from modelpress.optimize.sources import parse_model_ref
        >>> a = parse_model_ref("timm:resnet18", weights="inputs/" + "1" * 64 + ".safetensors", data={"eval": "x"})
        >>> content_id(a) != content_id(a.with_paths(name="resnet34"))
        True
    """
    d = staged.to_dict()
    d.pop("content_sha256", None)
    if staged.kind in ("hf", "export"):
        d.pop("name", None)  # the user's path: where the files were, not what they are
    d["source_version"] = source_version(staged.kind)
    if staged.kind == "registered":
        # A factory's own code and release decide what it builds (issue 10 item 6).
        d["factory"] = builtin_content_id(staged.name) or f"unowned:{staged.name}"
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def source_version(kind: str) -> str:
    """What version of the code turns a ref of ``kind`` into a model: the sha256 of modelpress's source
    modules for it plus the versions of the libraries it loads with (transformers, torchvision, timm).

    Example:
        >>> source_version("export") == source_version("export")
        True
    """
    h = hashlib.sha256(kind.encode())
    for mod in _SOURCE_MODULES.get(kind, ()):
        h.update(f"\n{mod}:{module_source_sha256(f'modelpress.optimize.sources.{mod}')}".encode())
    for pkg in _SOURCE_PACKAGES.get(kind, ()):
        try:
            h.update(f"\n{pkg}=={version(pkg)}".encode())
        except PackageNotFoundError:
            h.update(f"\n{pkg}: not installed".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- the worker side
def localize_ref(ref: "ModelRef", *, store: "ArtifactStore", cache_dir: str | os.PathLike[str]) -> "ModelRef":
    """The staged ref with every store key replaced by a local, hash-checked path (folders rebuilt).

    Keys must be content keys inside the store (``ArtifactStore.key_for``): a row cannot point a worker
    at a file elsewhere, and bytes changed after staging fail their hash check.

    Example:
        >>> local = localize_ref(staged, store=store, cache_dir="/var/mp/store-cache")  # doctest: +SKIP
        >>> Path(local.path, "config.json").is_file()  # doctest: +SKIP
        True
    """
    from modelpress.store import is_tree_ref

    def get(key: str | None) -> str | None:
        if key is None:
            return None
        if is_tree_ref(key):
            return str(store.fetch_tree(key, cache_dir=cache_dir))
        return str(store.fetch(key, cache_dir=cache_dir))

    fields: dict[str, Any] = {"path": get(ref.path), "weights": get(ref.weights)}
    if ref.data is not None:
        fields["data"] = {"eval": get(ref.data.eval), "calibration": get(ref.data.calibration),
                          "train": get(ref.data.train)}
    return ref.with_paths(**fields)


def name_staged_files(message: str, stored: dict[str, Any] | None) -> str:
    """A worker's error message with staged files named by what they are, not by their content keys.

    On the worker every file is a store object named by its sha256 (``5ee6….jsonl``) or a folder
    rebuilt under ``trees/<sha256>``; a person fixing the input needs "the eval data" instead.

    Example:
        >>> key = "inputs/" + "ab" * 32 + ".jsonl"
        >>> name_staged_files(f"/c/{'ab' * 32}.jsonl line 2: bad label", {"data": {"eval": key}})
        'eval data (data.eval, ababababababababab….jsonl) line 2: bad label'
    """
    import re

    if not isinstance(stored, dict):
        return message
    data = stored.get("data") if isinstance(stored.get("data"), dict) else {}
    roles = [("path", stored.get("path"), "model files (model)"), ("weights", stored.get("weights"), "weights file"),
             ("data.eval", data.get("eval"), "eval data"),
             ("data.calibration", data.get("calibration"), "calibration data"),
             ("data.train", data.get("train"), "train data")]
    for field, key, what in roles:
        if not isinstance(key, str):
            continue
        sha = key.rsplit("/", 1)[-1].split(".", 1)[0]
        if len(sha) != 64:
            continue
        short = f"{sha[:18]}…{key.rsplit('/', 1)[-1][64:]}" if field != "path" or not key.endswith(".tree.json") else ""
        label = what if field == "path" else f"{what} ({field}, {short})"
        message = re.sub(rf"[^\s'\"()\[\]]*{sha}[A-Za-z0-9._-]*", label, message)
    return message


__all__ = ["IntakeError", "content_id", "localize_ref", "name_staged_files", "resolve_paths", "row_name",
           "source_version", "stage_ref"]

"""The artifact store: content-addressed files in a local folder, or under any fsspec URL for a cluster.

``Settings.artifact_store`` is a folder (default ``$MODELPRESS_HOME/artifacts``) or a URL such as
``s3://bucket/modelpress`` (any filesystem fsspec knows; ``memory://`` in tests). Every object is
named by the sha256 of its bytes under a prefix — ``inputs/<sha256>.safetensors`` — so:

- a write is *write-once*: the same bytes always land on the same key, and a key that exists is not
  written again;
- a write is *atomic*: locally a temp file in the same folder, fsynced, then renamed; remotely a temp
  key, then moved onto the final key, so no reader ever sees half an object;
- a read checks the hash: bytes that do not match their expected sha256 raise ``IntegrityError``
  instead of reaching ``torch.load`` or a user.

Keys are confined to the store: ``..``, absolute paths, other schemes and URIs outside the store's
root are refused (``UnsafeKeyError``), so a job row cannot point a worker at an arbitrary file.

A local store is private to the service's user and group: objects are 0640, folders it creates 0750,
set explicitly (``filemodes``), whatever the umask. What a worker does with the store (its folders,
fetching a job's inputs, publishing results) is ``worker_store``.

No torch here: the producer stages weights through this module.

Example:
    >>> import tempfile, pathlib
    >>> store = ArtifactStore(tempfile.mkdtemp())
    >>> obj = store.put_bytes(b"weights", prefix="inputs", suffix=".pt")
    >>> obj.key == f"inputs/{obj.sha256}.pt"
    True
    >>> store.read_bytes(obj.key)
    b'weights'
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from modelpress.errors import UserInputError
from modelpress.filemodes import DIR_MODE, make_private_dirs, make_private_file

if TYPE_CHECKING:
    from modelpress.settings import Settings

CHUNK = 1 << 20
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,200}$")
_SUFFIX = re.compile(r"^(\.[A-Za-z0-9_-]{1,20}){0,2}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class StoreError(UserInputError):
    """An object or key the store cannot serve. Retrying cannot help, so a job fails with this message."""


class UnsafeKeyError(StoreError, ValueError):
    """A key or URI that would leave the store (``..``, an absolute path, another scheme or root)."""


class IntegrityError(StoreError):
    """Stored bytes whose sha256 is not the expected one (changed or truncated after they were stored)."""


class MissingObjectError(StoreError, FileNotFoundError):
    """No object under this key."""


@dataclass(frozen=True)
class StoredObject:
    """Where an object lives (``key`` inside the store, ``uri`` for people and job rows) and what it is."""

    key: str
    uri: str
    sha256: str
    size: int


def check_key(key: str) -> str:
    """Return ``key`` if it is a plain relative name inside the store, else raise ``UnsafeKeyError``.

    Each ``/``-separated part must start with a letter, digit or ``_`` and hold only ``A-Za-z0-9._-``:
    this refuses ``..``, hidden temp names, absolute paths, backslashes and schemes in one rule.

    Example:
        >>> check_key("inputs/ab.pt")
        'inputs/ab.pt'
        >>> try:
        ...     check_key("../etc/passwd")
        ... except UnsafeKeyError:
        ...     print("refused")
        refused
    """
    if not isinstance(key, str) or not key or len(key) > 1024:
        raise UnsafeKeyError(f"store key {key!r} is not allowed: expected a non-empty relative name")
    parts = key.split("/")
    if not all(_PART.match(p) for p in parts):
        raise UnsafeKeyError(f"store key {key!r} is not allowed: keys are relative names made of A-Z a-z 0-9 . _ - "
                             "(no '..', no absolute paths, no schemes)")
    return key


def is_remote(location: str) -> bool:
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme not in ("file", "local")


def _copy_hashing(src: BinaryIO, dst: BinaryIO) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    for chunk in iter(lambda: src.read(CHUNK), b""):
        h.update(chunk)
        dst.write(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a local file, read in 1 MiB chunks.

    Example:
        >>> import tempfile; p = tempfile.mktemp(); _ = open(p, "wb").write(b"")
        >>> file_sha256(p)[:8]
        'e3b0c442'
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _mismatch(uri: str, actual: str, expected: str) -> IntegrityError:
    return IntegrityError(f"stored object {uri} is corrupt: its sha256 is {actual[:16]}…, expected {expected[:16]}… "
                          "(it was changed or truncated after it was stored; submit the file again)")


class ArtifactStore:
    """One store root: a local folder or an fsspec URL.

    Example:
        >>> store = ArtifactStore("memory://doc-store")
        >>> obj = store.put_bytes(b"abc", prefix="inputs")
        >>> store.uri(obj.key).startswith("memory://")
        True
    """

    def __init__(self, location: str | os.PathLike[str]) -> None:
        loc = os.fspath(location)
        self.location = loc
        self._fs: Any = None
        if is_remote(loc):
            import fsspec

            try:
                self._fs, root = fsspec.core.url_to_fs(loc)
            except (ImportError, ValueError) as e:
                # e.g. s3:// without s3fs installed: say what to install, not a registry traceback.
                raise StoreError(f"artifact store {loc!r} cannot be opened: {e}") from None
            self._root = root.rstrip("/")
            protocol = self._fs.protocol
            self._protocols = {protocol} if isinstance(protocol, str) else set(protocol)
        else:
            if loc.startswith(("file://", "local://")):
                loc = loc.split("://", 1)[1]
            self._root = str(Path(loc).expanduser().resolve())

    @classmethod
    def from_settings(cls, settings: "Settings") -> "ArtifactStore":
        """The store named by ``MODELPRESS_ARTIFACT_STORE`` (default: ``$MODELPRESS_HOME/artifacts``)."""
        return cls(settings.effective_artifact_store)

    @property
    def is_local(self) -> bool:
        return self._fs is None

    @property
    def root(self) -> str:
        """The store's root: an absolute folder, or the filesystem path behind the URL."""
        return self._root

    @property
    def root_path(self) -> Path:
        """The root folder of a local store."""
        if not self.is_local:
            raise StoreError(f"artifact store {self.location} is not a local folder")
        return Path(self._root)

    # ----------------------------------------------------------------- names
    def _path(self, key: str) -> str:
        return f"{self._root}/{check_key(key)}"

    def uri(self, key: str) -> str:
        """What a job row records: an absolute path for a local store, a full URL otherwise."""
        return self._path(key) if self.is_local else self._fs.unstrip_protocol(self._path(key))

    def key_for(self, ref: str) -> str:
        """The key of ``ref`` (a key, or a URI/path this store produced); refuses anything outside.

        Example:
            >>> ArtifactStore("/srv/store").key_for("/srv/store/inputs/a.pt")
            'inputs/a.pt'
        """
        if not isinstance(ref, str) or not ref:
            raise UnsafeKeyError(f"store reference {ref!r} is empty")
        if "://" in ref or ref.startswith("/"):
            if self.is_local:
                path = ref.split("://", 1)[1] if ref.startswith(("file://", "local://")) else ref
                if "://" in path:
                    raise UnsafeKeyError(f"{ref!r} is not in the artifact store {self._root} (another scheme)")
            else:
                import fsspec

                protocol, _ = fsspec.core.split_protocol(ref)
                if protocol is None or protocol not in self._protocols:
                    raise UnsafeKeyError(f"{ref!r} is not in the artifact store {self.location} (another scheme)")
                path = self._fs._strip_protocol(ref)
            if not path.startswith(self._root + "/"):
                raise UnsafeKeyError(f"{ref!r} is outside the artifact store {self.location}")
            ref = path[len(self._root) + 1:]
        return check_key(ref)

    @staticmethod
    def content_key(sha256: str, *, prefix: str, suffix: str = "") -> str:
        """``<prefix>/<sha256><suffix>``, with the suffix (e.g. ``.safetensors``) checked too."""
        if not _SHA256.match(sha256):
            raise UnsafeKeyError(f"{sha256!r} is not a sha256 hex digest")
        if not _SUFFIX.match(suffix):
            raise UnsafeKeyError(f"file suffix {suffix!r} is not allowed in a store key")
        return check_key(f"{prefix.strip('/')}/{sha256}{suffix.lower()}")

    # ----------------------------------------------------------------- queries
    def exists(self, ref: str) -> bool:
        path = self._path(self.key_for(ref))
        return os.path.isfile(path) if self.is_local else bool(self._fs.exists(path))

    def size(self, ref: str) -> int:
        path = self._path(self.key_for(ref))
        try:
            return os.stat(path).st_size if self.is_local else int(self._fs.info(path)["size"])
        except FileNotFoundError:
            raise MissingObjectError(f"no object {self.uri(self.key_for(ref))} in the artifact store") from None

    # ----------------------------------------------------------------- writes
    def put_file(self, src: str | os.PathLike[str], *, prefix: str, suffix: str | None = None) -> StoredObject:
        """Store a local file under ``<prefix>/<its sha256><suffix>`` (suffix default: the file's).

        Write-once: an object already under that key whose bytes hash to its name is kept as is; one
        that does not (corrupt, even with the right size) is replaced by these bytes.

        Example:
            >>> import tempfile; src = tempfile.mktemp(suffix=".pt"); _ = open(src, "wb").write(b"w")
            >>> ArtifactStore(tempfile.mkdtemp()).put_file(src, prefix="inputs").key.endswith(".pt")
            True
        """
        src = Path(src)
        digest, size = file_sha256(src), src.stat().st_size
        key = self.content_key(digest, prefix=prefix, suffix=src.suffix if suffix is None else suffix)
        if self.exists(key) and self.size(key) == size and self._intact(key, digest):
            return StoredObject(key, self.uri(key), digest, size)
        with src.open("rb") as f:
            written, n = self._write_atomically(key, f)
        if written != digest:
            # The source changed between hashing and copying: what is stored is not what was named.
            self._delete(key)
            raise IntegrityError(f"{src} changed while it was being stored; submit it again")
        return StoredObject(key, self.uri(key), digest, n)

    def put_bytes(self, data: bytes, *, prefix: str, suffix: str = "") -> StoredObject:
        """Store ``data`` under ``<prefix>/<sha256><suffix>`` (write-once)."""
        import io

        digest = hashlib.sha256(data).hexdigest()
        key = self.content_key(digest, prefix=prefix, suffix=suffix)
        if not (self.exists(key) and self._intact(key, digest)):
            self._write_atomically(key, io.BytesIO(data))
        return StoredObject(key, self.uri(key), digest, len(data))

    def _intact(self, key: str, sha256: str) -> bool:
        # A same-sized object can still be corrupt (a flipped bit): only its hash says it is the object.
        path = self._path(key)
        if self.is_local:
            return file_sha256(path) == sha256
        h = hashlib.sha256()
        with self._fs.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                h.update(chunk)
        return h.hexdigest() == sha256

    def _write_atomically(self, key: str, src: BinaryIO) -> tuple[str, int]:
        final = self._path(key)
        if self.is_local:
            folder = os.path.dirname(final)
            make_private_dirs(folder)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out:
                    digest, n = _copy_hashing(src, out)
                    out.flush()
                    os.fsync(out.fileno())
                # The service's group (workers on a shared folder) reads it; other users never (issue 20).
                make_private_file(tmp)
                os.replace(tmp, final)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            return digest, n
        # Remote: the temp key sits beside the final one (same bucket, so the move is a server-side
        # copy); its leading dot keeps it out of key_for's reach.
        tmp = f"{self._root}/.tmp/{uuid.uuid4().hex}"
        try:
            with self._fs.open(tmp, "wb") as out:
                digest, n = _copy_hashing(src, out)
            self._fs.mv(tmp, final)
        except BaseException:
            if self._fs.exists(tmp):
                self._fs.rm(tmp)
            raise
        return digest, n

    def _delete(self, key: str) -> None:
        path = self._path(key)
        if self.is_local:
            if os.path.exists(path):
                os.unlink(path)
        elif self._fs.exists(path):
            self._fs.rm(path)

    # ----------------------------------------------------------------- reads
    def _expected(self, key: str, sha256: str | None) -> str:
        if sha256 is not None:
            return sha256
        stem = key.rsplit("/", 1)[-1].split(".", 1)[0]
        if not _SHA256.match(stem):
            raise StoreError(f"no expected sha256 for {key!r}: pass sha256= (only content keys name their own hash)")
        return stem

    def read_bytes(self, ref: str, *, sha256: str | None = None) -> bytes:
        """The object's bytes, checked against ``sha256`` (default: the hash its content key names)."""
        key = self.key_for(ref)
        expected = self._expected(key, sha256)
        path = self._path(key)
        try:
            if self.is_local:
                data = Path(path).read_bytes()
            else:
                data = self._fs.cat_file(path)
        except FileNotFoundError:
            raise MissingObjectError(f"no object {self.uri(key)} in the artifact store") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise _mismatch(self.uri(key), actual, expected)
        return data

    def fetch(self, ref: str, *, cache_dir: str | os.PathLike[str], sha256: str | None = None) -> Path:
        """A local, hash-checked path to the object: the file itself for a local store, else a cached copy.

        Remote objects are downloaded into ``cache_dir/<key>`` (temp file + rename) while being hashed;
        a cached copy is re-hashed before it is trusted.

        Example:
            >>> store = ArtifactStore("memory://doc-fetch")
            >>> obj = store.put_bytes(b"w", prefix="inputs", suffix=".pt")
            >>> store.fetch(obj.uri, cache_dir=tempfile.mkdtemp()).read_bytes()
            b'w'
        """
        key = self.key_for(ref)
        expected = self._expected(key, sha256)
        if self.is_local:
            path = Path(self._path(key))
            if not path.is_file():
                raise MissingObjectError(f"no object {path} in the artifact store")
            actual = file_sha256(path)
            if actual != expected:
                raise _mismatch(str(path), actual, expected)
            return path
        dest = Path(cache_dir) / key
        if dest.is_file():
            if file_sha256(dest) == expected:
                return dest
            dest.unlink()  # a damaged cache copy: fetch it again
        make_private_dirs(dest.parent)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    with self._fs.open(self._path(key), "rb") as src:
                        actual, _ = _copy_hashing(src, out)
                except FileNotFoundError:
                    raise MissingObjectError(f"no object {self.uri(key)} in the artifact store") from None
            if actual != expected:
                raise _mismatch(self.uri(key), actual, expected)
            make_private_file(tmp)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return dest

    # ----------------------------------------------------------------- folders (issue 9)
    def put_tree(self, folder: str | os.PathLike[str], *, prefix: str, files: "list[str] | None" = None,
                 max_files: int = 100_000, max_bytes: int | None = None) -> StoredObject:
        """Store every file of ``folder`` content-addressed, then a small JSON index of them.

        The index (``{"_version": 1, "files": {"rel/path": "<content key>", ...}}``, sorted, itself
        content-addressed under ``<prefix>/<sha256>.tree.json``) is what a job row names; a folder with
        the same files under the same names always gets the same key, and a file shared by two folders is
        stored once. ``files`` (relative paths) restricts what is taken; by default every regular file
        not under a dot-name (``.git``, editor files) is. Symlinks leaving the folder are refused.

        Example:
            >>> import tempfile, pathlib
            >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "config.json").write_text("{}")
            >>> store = ArtifactStore(tempfile.mkdtemp())
            >>> obj = store.put_tree(d, prefix="inputs")
            >>> obj.key.endswith(".tree.json"), list(store.read_tree(obj.key))
            (True, ['config.json'])
        """
        root = Path(folder).resolve()
        rels = sorted(files) if files is not None else list_tree(root)
        if len(rels) > max_files:
            raise StoreError(f"folder {folder} holds {len(rels)} files, more than the limit of {max_files}")
        if not rels:
            raise StoreError(f"folder {folder} holds no files")
        total = 0
        for rel in rels:
            check_tree_path(rel)
            path = (root / rel).resolve()
            if not path.is_relative_to(root) or not path.is_file():
                raise StoreError(f"{rel!r} in folder {folder} is not a file inside the folder")
            total += path.stat().st_size
        if max_bytes is not None and total > max_bytes:
            raise StoreError(f"folder {folder} holds {total} bytes, over the limit of {max_bytes} bytes")
        # A file keeps its suffix in the store when the key rules allow it (people read keys); the folder's
        # names live in the index, so a suffix the rules refuse is simply dropped.
        index = {rel: self.put_file(root / rel, prefix=prefix,
                                    suffix=Path(rel).suffix if _SUFFIX.match(Path(rel).suffix) else "").key
                 for rel in rels}
        body = json.dumps({"_version": 1, "files": index}, sort_keys=True, separators=(",", ":")).encode()
        return self.put_bytes(body, prefix=prefix, suffix=TREE_SUFFIX)

    def read_tree(self, ref: str) -> dict[str, str]:
        """The index of a stored folder: relative path → content key, every name checked again."""
        try:
            doc = json.loads(self.read_bytes(ref))
        except ValueError:
            raise StoreError(f"{ref} is not a folder index (not JSON)") from None
        files = doc.get("files") if isinstance(doc, dict) and doc.get("_version") == 1 else None
        if not isinstance(files, dict) or not files:
            raise StoreError(f"{ref} is not a folder index (expected {{'_version': 1, 'files': {{...}}}})")
        return {check_tree_path(rel): self.key_for(key) for rel, key in files.items()}

    def fetch_tree(self, ref: str, *, cache_dir: str | os.PathLike[str]) -> Path:
        """A local folder holding a stored folder's files under their names, each hash-checked.

        Built once per index under ``cache_dir/trees/<index sha256>/`` in a temp folder renamed into place,
        so a reader sees all of it or none. Files are copies, not links: a loader that wrote into its folder
        must not be able to change the store's objects.

        Example:
            >>> local = store.fetch_tree(obj.uri, cache_dir=tempfile.mkdtemp())  # doctest: +SKIP
            >>> (local / "config.json").read_text()  # doctest: +SKIP
            '{}'
        """
        import shutil

        key = self.key_for(ref)
        index = self.read_tree(key)
        dest = Path(cache_dir) / "trees" / key.rsplit("/", 1)[-1].split(".", 1)[0]
        if dest.is_dir():
            # Built before (complete: it was renamed into place); the files are checked again all the same,
            # since a cache folder can be edited behind our back.
            if all((dest / rel).is_file() and file_sha256(dest / rel) == self._expected(k, None)
                   for rel, k in index.items()):
                return dest
            shutil.rmtree(dest)
        make_private_dirs(dest.parent)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".tmp-"))
        os.chmod(tmp, DIR_MODE)  # mkdtemp's 0700, widened to the service's group like every store folder
        try:
            for rel, k in index.items():
                src = self.fetch(k, cache_dir=cache_dir)
                out = tmp / rel
                make_private_dirs(out.parent)
                shutil.copyfile(src, out)
                make_private_file(out)
            try:
                os.replace(tmp, dest)
            except OSError:
                if not dest.is_dir():  # another process won the race with the same content: use theirs
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return dest


TREE_SUFFIX = ".tree.json"


def is_tree_ref(ref: str) -> bool:
    """Whether a store ref names a folder index (``put_tree``) rather than a single file.

    Example:
        >>> is_tree_ref("inputs/" + "0" * 64 + ".tree.json"), is_tree_ref("inputs/" + "0" * 64 + ".json")
        (True, False)
    """
    return ref.endswith(TREE_SUFFIX)


def check_tree_path(rel: str) -> str:
    """A relative path inside a stored folder: plain parts only (no ``..``, no absolute, no dot-names).

    Example:
        >>> check_tree_path("a/b.png")
        'a/b.png'
    """
    parts = rel.split("/") if isinstance(rel, str) else []
    if not parts or len(rel) > 1024 or any(not p or p in (".", "..") or p.startswith(".") or "\\" in p
                                            or "\x00" in p for p in parts):
        raise UnsafeKeyError(f"{rel!r} is not a plain relative path inside a folder")
    return rel


def list_tree(root: str | os.PathLike[str]) -> list[str]:
    """Every regular file under ``root`` as a sorted relative POSIX path, skipping dot-names.

    Example:
        >>> list_tree(tempfile.mkdtemp())
        []
    """
    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in filenames:
            if not name.startswith("."):
                out.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(out)


__all__ = ["ArtifactStore", "IntegrityError", "MissingObjectError", "StoreError", "StoredObject", "UnsafeKeyError",
           "check_key", "check_tree_path", "file_sha256", "is_tree_ref", "list_tree"]

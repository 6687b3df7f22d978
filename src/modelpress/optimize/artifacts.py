"""Artifacts: one file per model, written atomically, reloaded with one call and no unpickling.

Format: ``torch.save({"format", "manifest" (JSON text), "state_dict"})``. Loading uses
``torch.load(weights_only=True)`` (tensors and plain containers only), rebuilds the architecture from
the *registered* factory named in the manifest, replays each recipe step's ``rebuild`` to get the same
module structure, then loads the state dict strictly. The float "before" model is saved in the same
format, so before/after sizes compare like with like.

Example:
    >>> artifact_key("a" * 64, "b" * 64, "fbgemm", "2.13.0+cpu")[:12]  # doctest: +ELLIPSIS
    '...'
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelpress.filemodes import make_private_dirs, make_private_file
from modelpress.errors import ModelLoadError, is_task_control
from modelpress.optimize.buildinfo import build_fingerprint
from modelpress.optimize.hostcpu import cpu_flags

FORMAT = "modelpress-artifact/1"


def artifact_key(model_sha256: str, recipe_sha256: str, engine: str, torch_version: str, arch: str | None = None) -> str:
    """The output id: same input model, recipe, engine, torch, CPU and builder code → same key (a re-run finds it).

    The architecture is part of it because a result holds *measured* numbers: an aarch64 worker and an
    x86 worker on the same ``qnnpack`` queue sharing one store must not answer each other's jobs. The CPU's
    int8/bf16 features are too: they decide what is built (7-bit weights where u8×s8 saturates, OpenVINO's
    bf16 inference), so an AVX2 host and a VNNI host build different files. And the builder's own code
    (``build_fingerprint``): after an upgrade that changes how artifacts are made, the old ones are not
    handed out as the new build's.
    """
    import platform

    parts = [model_sha256, recipe_sha256, engine, torch_version, arch or platform.machine(),
             ",".join(cpu_build_features()), build_fingerprint()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


#: CPU flags that change what an int8 or bf16 build produces (Linux's /proc/cpuinfo names).
BUILD_CPU_FLAGS = frozenset({"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16",
                             "asimddp", "i8mm", "bf16"})


@functools.lru_cache(maxsize=None)
def cpu_build_features() -> tuple[str, ...]:
    """The CPU's flags among ``BUILD_CPU_FLAGS`` (empty where /proc/cpuinfo is not readable).

    Example:
        >>> set(cpu_build_features()) <= BUILD_CPU_FLAGS
        True
    """
    return tuple(sorted(cpu_flags() & BUILD_CPU_FLAGS))


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Write via a temp file in the same folder, fsync, then rename: readers never see half a file.

    The file is 0640 and folders it creates 0750 (``filemodes``): the service's user and group only.
    """
    make_private_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        make_private_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise
    with _suppress():
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, lambda f: f.write(json.dumps(data, indent=1, sort_keys=True).encode()))


def save_artifact(path: Path, model: nn.Module, manifest: dict[str, Any]) -> int:
    """Save ``model``'s state dict and ``manifest`` atomically; return the file's size in bytes."""
    payload = {"format": FORMAT, "manifest": json.dumps(manifest, sort_keys=True), "state_dict": model.state_dict()}
    atomic_write_bytes(path, lambda f: torch.save(payload, f))
    return os.stat(path).st_size


_SHA256_NAME = re.compile(r"^[0-9a-f]{64}$")


def publish_object(tmp: Path, folder: Path, suffix: str) -> tuple[Path, str, int]:
    """Move a finished temp file to ``folder/<sha256><suffix>``; never overwrite good bytes.

    An object already there with the right hash is kept (same bytes: nothing to do). One whose bytes
    do not match its name (corrupt, e.g. a flipped bit with the size unchanged) is replaced.
    """
    from modelpress.store import file_sha256

    digest, size = file_sha256(tmp), os.stat(tmp).st_size
    final = folder / f"{digest}{suffix}"
    if final.is_file() and file_sha256(final) == digest:
        os.unlink(tmp)
    else:
        make_private_file(tmp)  # the service's other workers (its group) read objects; other users never
        os.replace(tmp, final)
    return final, digest, size


def save_artifact_object(folder: Path, model: nn.Module, manifest: dict[str, Any]) -> tuple[Path, str, int]:
    """Save an artifact as an immutable, content-addressed object ``folder/<sha256>.mpz``.

    Returns (path, sha256, bytes). A later run never rewrites an earlier object: same bytes land on the
    same name, other bytes on another name, so a job row's path always holds the bytes it describes.

    Example:
        >>> import tempfile
        >>> p, sha, n = save_artifact_object(Path(tempfile.mkdtemp()), torch.nn.Linear(2, 2), {"doc": 1})
        >>> p.name == f"{sha}.mpz" and n == p.stat().st_size
        True
    """
    make_private_dirs(folder)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        save_artifact(tmp, model, manifest)
        return publish_object(tmp, folder, ".mpz")
    finally:
        if tmp.exists():
            tmp.unlink()


def put_json_object(folder: Path, data: Any) -> tuple[Path, str]:
    """Write JSON as an immutable object ``folder/<sha256>.json``; returns (path, sha256).

    Example:
        >>> import tempfile
        >>> p, sha = put_json_object(Path(tempfile.mkdtemp()), {"a": 1})
        >>> p.name == f"{sha}.json"
        True
    """
    make_private_dirs(folder)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(data, indent=1, sort_keys=True).encode())
            f.flush()
            os.fsync(f.fileno())
        path, digest, _ = publish_object(tmp, folder, ".json")
        return path, digest
    finally:
        if tmp.exists():
            tmp.unlink()


def verify_object(path: str | os.PathLike[str], sha256: str | None = None) -> None:
    """Raise ``IntegrityError`` if the file's sha256 is not ``sha256`` (default: the hash its name says).

    A file not named by its hash and given no ``sha256`` is not checked.

    Example:
        >>> import tempfile
        >>> p, sha = put_json_object(Path(tempfile.mkdtemp()), {"a": 1})
        >>> verify_object(p)
        >>> _ = p.write_text('{"a": 2}')
        >>> try:
        ...     verify_object(p)
        ... except Exception as e:
        ...     print(type(e).__name__)
        IntegrityError
    """
    from modelpress.store import IntegrityError, file_sha256

    p = Path(path)
    expected = sha256 or (p.name.split(".", 1)[0] if _SHA256_NAME.match(p.name.split(".", 1)[0]) else None)
    if expected is None:
        return
    actual = file_sha256(p)
    if actual != expected:
        raise IntegrityError(f"artifact {p} is corrupt: its sha256 is {actual[:16]}…, expected {expected[:16]}… "
                             "(changed after it was stored); submit the job again with --force to replace it")


@dataclass
class LoadedArtifact:
    model: nn.Module
    manifest: dict[str, Any]


def read_manifest(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader error means the file is not a usable artifact
        if is_task_control(e):  # the soft time limit / abandon signal is not a bad artifact
            raise
        raise ModelLoadError(f"{os.fspath(path)} is not a readable modelpress artifact ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelLoadError(f"{os.fspath(path)} is not a modelpress artifact (format {FORMAT} expected)")
    return json.loads(payload["manifest"]), payload["state_dict"]


def load_artifact(path: str | os.PathLike[str], *, allowlist: tuple[str, ...] = (),
                  engine: str | None = None, resolve_ref: Any = None) -> LoadedArtifact:
    """Rebuild the model saved at ``path``: registered factory → recipe steps' structure → weights.

    ``engine`` defaults to the one the artifact was made for (packed int8 weights are engine-specific).
    A user's model (HF folder, torchvision/timm, .pt2) is rebuilt from the ``ModelRef`` in the manifest;
    when its local files are not on this machine, ``resolve_ref(stored_ref: dict) -> ModelRef`` (e.g.
    ``store.fetch_model_ref``, fetching the store refs recorded at submit into a cache) gives local ones.
    """
    from modelpress.optimize.backends import quantized_engine
    from modelpress.optimize.recipes import parse_step
    from modelpress.optimize.techniques.registry import rebuild_step

    verify_object(path)  # a content-addressed artifact must hold the bytes its name says
    manifest, state_dict = read_manifest(path)
    model = _build_architecture(manifest["model"], allowlist=allowlist, resolve_ref=resolve_ref)
    eng = engine or manifest.get("engine") or torch.backends.quantized.engine
    with quantized_engine(eng):
        for step, meta in zip(manifest["recipe"]["steps"], manifest["steps_meta"], strict=True):
            model = rebuild_step(model, parse_step(step), meta, engine=eng)
        model.load_state_dict(state_dict, strict=True)
    # The engine must also be current when the model runs; record it for the caller.
    torch.backends.quantized.engine = eng
    return LoadedArtifact(model.eval(), manifest)


def _build_architecture(m: dict[str, Any], *, allowlist: tuple[str, ...], resolve_ref: Any) -> nn.Module:
    from modelpress.optimize.sources.registered import resolve_model

    if "ref" not in m:
        return resolve_model(m["name"], allowlist=allowlist).build().eval()
    from modelpress.optimize.sources.ref import ModelRef
    from modelpress.optimize.sources.resolve import build_for_artifact

    ref = ModelRef.from_dict(m["ref"])
    local_ok = all(Path(p).exists() for p in (ref.path, ref.weights) if p)
    if not local_ok and resolve_ref is not None and m.get("stored_ref"):
        ref = resolve_ref(m["stored_ref"])  # store refs (a job row's model_ref) → a ModelRef with local files
    return build_for_artifact(ref, allowlist=allowlist)

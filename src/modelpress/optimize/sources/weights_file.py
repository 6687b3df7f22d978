"""A weights file's structure, checked without torch: safetensors headers and ``torch.save`` zips.

What lives here: ``check_weights_file`` (refuse a truncated, corrupt or not-weights file),
``check_safetensors`` and ``check_torch_zip`` (its two formats), ``file_size_problem`` (a file that is
missing or over the size limit), ``weights_file_problems`` (all of these as messages) and
``safetensors_header`` (read a safetensors header without loading a tensor). The producer
(``api.Producer.validate``, for a registered model's weights) and the sources' submit checks
(``submit_hf``, ``submit_vision``, ``submit_registered``, ``submit_data``) use them; nothing here imports
torch, so submitting stays cheap.

Example:
    >>> import json, tempfile
    >>> p = Path(tempfile.mkdtemp(), "w.safetensors")
    >>> raw = json.dumps({"fc.weight": {"dtype": "F32", "shape": [2, 1], "data_offsets": [0, 8]}}).encode()
    >>> _ = p.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(8))
    >>> check_weights_file(p, max_bytes=1 << 20)
    >>> safetensors_header(p)["fc.weight"]["shape"]
    [2, 1]
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path
from typing import Any

from modelpress.errors import ModelLoadError

# A safetensors header longer than this is refused: real ones are kilobytes, and it is read whole.
MAX_HEADER_BYTES = 100 * 1024 * 1024


def check_weights_file(path: Path, *, max_bytes: int) -> None:
    """Refuse, without torch, a weights file whose structure is broken (truncated, corrupt, not weights).

    ``.safetensors``: the header must parse and its tensors must end exactly at the end of the file.
    Otherwise a ``torch.save`` zip: its directory must be readable, every member's CRC must match, it must
    hold a ``data.pkl``, and it must not unpack to more than ``max_bytes``. A legacy (pre-zip) ``torch.save``
    pickle is passed on: the worker reads it with ``weights_only=True``, which refuses code.

    Example:
        >>> import tempfile; p = Path(tempfile.mktemp(suffix=".safetensors")); _ = p.write_bytes(b"\x05")
        >>> check_weights_file(p, max_bytes=1 << 20)
        Traceback (most recent call last):
        ...
        modelpress.errors.ModelLoadError: weights file ... is not a valid safetensors file: shorter than its 8-byte header length
    """
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"weights file {path.name} is empty")
    if path.suffix.lower() == ".safetensors":
        check_safetensors(path)
        return
    with path.open("rb") as f:
        head = f.read(2)
    if head == b"PK":
        check_torch_zip(path, max_bytes=max_bytes)
    elif head[:1] != b"\x80":  # pickle protocol 2+ opcode: a legacy torch.save file
        raise ModelLoadError(f"weights file {path.name} is neither a safetensors file nor a torch.save file; "
                             "save it with safetensors or torch.save(model.state_dict())")


def weights_file_problems(path: Path, *, max_bytes: int) -> list[str]:
    """What is wrong with a weights file a source names: missing, over ``max_bytes``, or broken; empty when fine.

    Example:
        >>> weights_file_problems(Path("/nope/w.safetensors"), max_bytes=1 << 20)
        ['weights file /nope/w.safetensors does not exist']
    """
    if refused := file_size_problem(path, what="weights file", max_bytes=max_bytes):
        return [refused]
    try:
        check_weights_file(path, max_bytes=max_bytes)
    except ModelLoadError as e:
        return [str(e)]
    return []


def file_size_problem(path: Path, *, what: str, max_bytes: int) -> str | None:
    """Why a file a user named cannot be taken before it is read: not there, or over ``max_bytes``.

    Every file of a model reference (weights, data) is bounded by the same setting, and named the same way.

    Example:
        >>> file_size_problem(Path("/nope.npz"), what="data file", max_bytes=1 << 20)
        'data file /nope.npz does not exist'
    """
    if not path.is_file():
        return f"{what} {path} does not exist"
    size = path.stat().st_size
    if size > max_bytes:
        return (f"{what} {path.name} is {size} bytes, over the limit of {max_bytes} bytes "
                "(MODELPRESS_MAX_WEIGHTS_BYTES)")
    return None


def check_safetensors(path: Path) -> None:
    """Refuse a safetensors file whose header does not parse or whose tensors do not fill the file exactly.

    The messages say "weights file"; a data-file check rewords them (``submit_data.check_data_file``).

    Example:
        >>> import tempfile; p = Path(tempfile.mktemp(suffix=".safetensors"))
        >>> _ = p.write_bytes((10**12).to_bytes(8, "little") + b"{}")
        >>> check_safetensors(p)
        Traceback (most recent call last):
        ...
        modelpress.errors.ModelLoadError: weights file ... its header claims 1000000000000 bytes, but the file has 2 (truncated?)
    """
    def bad(why: str) -> ModelLoadError:
        return ModelLoadError(f"weights file {path.name} is not a valid safetensors file: {why}")

    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad("shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise bad(f"its header claims {n} bytes, but the file has {size - 8} (truncated?)")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            raise bad("its header is not JSON (corrupt or truncated)") from None
    if not isinstance(header, dict):
        raise bad("its header is not a mapping")
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]
    if len(ends) != len([k for k in header if k != "__metadata__"]):
        raise bad("a tensor entry has no data_offsets")
    if (max(ends) if ends else 0) != size - 8 - n:
        raise bad(f"its tensors need {max(ends) if ends else 0} data bytes, the file has {size - 8 - n} (truncated?)")


def check_torch_zip(path: Path, *, max_bytes: int) -> None:
    """Refuse a ``torch.save`` zip that is corrupt, holds no ``data.pkl`` or unpacks to over ``max_bytes``.

    Example:
        >>> import tempfile; p = Path(tempfile.mktemp(suffix=".pt"))
        >>> with zipfile.ZipFile(p, "w") as zf:
        ...     zf.writestr("readme.txt", "not weights")
        >>> check_torch_zip(p, max_bytes=1 << 20)
        Traceback (most recent call last):
        ...
        modelpress.errors.ModelLoadError: weights file ... is a zip without data.pkl, not a torch.save file
    """
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if not any(i.filename.endswith("data.pkl") for i in infos):
                raise ModelLoadError(f"weights file {path.name} is a zip without data.pkl, not a torch.save file")
            unpacked = sum(i.file_size for i in infos)
            if unpacked > max_bytes:
                raise ModelLoadError(f"weights file {path.name} unpacks to {unpacked} bytes, over the limit of "
                                     f"{max_bytes} bytes (MODELPRESS_MAX_WEIGHTS_BYTES)")
            broken = zf.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError) as e:
        raise ModelLoadError(f"weights file {path.name} is corrupt or truncated ({type(e).__name__}: {e}); "
                             "save it again with torch.save(model.state_dict()) or safetensors") from None
    if broken is not None:
        raise ModelLoadError(f"weights file {path.name} is corrupt: {broken} fails its checksum")


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor name → dtype, shape, offsets); ``{}`` when unreadable.

    Example:
        >>> safetensors_header(Path("/nonexistent.safetensors"))
        {}
    """
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(path.stat().st_size - 8, MAX_HEADER_BYTES):
                return {}
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError, UnicodeDecodeError):
        return {}
    return header if isinstance(header, dict) else {}


__all__ = ["MAX_HEADER_BYTES", "check_safetensors", "check_torch_zip", "check_weights_file", "file_size_problem",
           "safetensors_header", "weights_file_problems"]

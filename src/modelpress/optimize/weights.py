"""Reading a weights file without running its code, and loading it into a model; used by every source.

``read_state_dict`` takes ``.safetensors`` or a ``torch.save`` file read with ``weights_only=True`` (never
unpickled code), with a size limit that also covers what a zip member unpacks to; ``load_weights`` loads
strictly and refuses NaN/Inf; ``unsafe_weights_message`` words a refusal without torch's advice to turn
the check off.

Example:
    >>> import torch
    >>> load_weights(torch.nn.Linear(2, 2), {"weight": torch.full((2, 2), float("nan")), "bias": torch.zeros(2)})
    Traceback (most recent call last):
    ...
    modelpress.errors.ModelLoadError: weights contain NaN or Inf in weight
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelpress.errors import ModelLoadError, is_task_control

# torch words it several ways across versions: "Unsupported global: GLOBAL os.system was not an allowed
# global", "Trying to load unsupported GLOBAL posix.system whose module posix is blocked".
_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][A-Za-z0-9_.]*)")
_UNSAFE_CALL = re.compile(r"(Unsupported operand [0-9]+|Unsupported class [A-Za-z0-9_.]+)")


def unsafe_weights_message(filename: str, error: BaseException) -> str:
    """Why a weights file was refused, without torch's advice to load it with ``weights_only=False``.

    torch's message suggests disabling the very check that protects the worker; modelpress never
    passes that on. It names what the file tried to load (the global, parsed from torch's message)
    and how to fix the file.

    Example:
        >>> unsafe_weights_message("w.pt", RuntimeError("Weights only load failed ... Unsupported global: "
        ...                        "GLOBAL os.system was not an allowed global by default."))
        'weights file w.pt was refused: it holds code, not only tensors (it tries to load os.system); re-save it as safetensors or as a plain state dict (torch.save(model.state_dict()))'
    """
    text = str(error)
    m = _UNSAFE_GLOBAL.search(text)
    if m is not None:
        what = f"it tries to load {m.group(1).rstrip('.')}"
    elif (c := _UNSAFE_CALL.search(text)) is not None:
        what = f"a pickle instruction outside the tensor allow-list: {c.group(1).lower()}"
    else:
        what = None
    if what is not None or "weights only load failed" in text.lower():
        return (f"weights file {filename} was refused: it holds code, not only tensors "
                f"({what or 'an object outside the tensor allow-list'}); re-save it as safetensors or as a plain "
                "state dict (torch.save(model.state_dict()))")
    # Other reader errors (truncated, not a torch file): their first line, minus any weights_only advice.
    first_line = (text.splitlines() or [""])[0][:300]
    if "weights_only" in first_line:
        first_line = "the file is not a plain tensor file"
    return (f"weights file {filename} could not be read safely ({type(error).__name__}: {first_line}); "
            "save it with safetensors or torch.save(model.state_dict())")


def read_state_dict(path: str | os.PathLike[str], *, max_bytes: int) -> dict[str, torch.Tensor]:
    """Read a state dict without unpickling code: safetensors, or ``torch.load(weights_only=True)``."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"weights file {p} does not exist")
    size = p.stat().st_size
    if size > max_bytes:
        raise ModelLoadError(f"weights file {p.name} is {size} bytes, over the limit of {max_bytes} bytes")
    is_safetensors = p.suffix.lower() == ".safetensors"
    if not is_safetensors:
        _check_zip_unpacked_size(p, max_bytes)
    try:
        if is_safetensors:
            from safetensors.torch import load_file

            sd: Any = load_file(str(p), device="cpu")
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every reader error means "this file is not usable weights"
        # ...except Celery's soft time limit (billiard raises it inside whatever runs): it must reach the task.
        if is_task_control(e):
            raise
        raise ModelLoadError(unsafe_weights_message(p.name, e)) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelLoadError(f"weights file {p.name} does not hold a state dict of tensors")
    odd = [str(k)[:60] for k, v in sd.items()
           if not isinstance(k, str) or v.layout != torch.strided or v.device.type != "cpu"]
    if odd:
        raise ModelLoadError(f"weights file {p.name} holds entries that are not named dense CPU tensors: "
                             f"{', '.join(odd[:5])}")
    return sd


def _check_zip_unpacked_size(p: Path, max_bytes: int) -> None:
    # torch.save files are zips; a compressed member could unpack to far more than the file's size
    # (a zip bomb), so the limit applies to what the directory says it unpacks to, before torch reads it.
    import zipfile

    if not zipfile.is_zipfile(p):
        return
    try:
        with zipfile.ZipFile(p) as zf:
            unpacked = sum(i.file_size for i in zf.infolist())
    except (zipfile.BadZipFile, OSError, EOFError):
        return  # torch.load reports the damage in its own words below
    if unpacked > max_bytes:
        raise ModelLoadError(f"weights file {p.name} unpacks to {unpacked} bytes, over the limit of {max_bytes} bytes")


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a state dict strictly, with an error a person can act on; refuse NaN/Inf."""
    bad = [k for k, v in state_dict.items()
           if (v.is_floating_point() or v.is_complex()) and not torch.isfinite(v).all()]
    if bad:
        raise ModelLoadError(f"weights contain NaN or Inf in {', '.join(bad[:5])}")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        raise ModelLoadError(f"weights do not fit the architecture: {msg[:600]}") from None


__all__ = ["load_weights", "read_state_dict", "unsafe_weights_message"]

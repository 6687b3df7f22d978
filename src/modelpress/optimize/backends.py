"""The quantization backend, behind one small interface.

``torch.ao.quantization`` is deprecated in torch 2.13 in favour of torchao (``quantize_``, pt2e), but on
this CPU it is the only int8 path faster than float without ``torch.compile`` (field notes). So the
step handlers talk to a ``QuantBackend``; ``TorchAOQuantization`` implements it with torch.ao today, and
a torchao implementation can be registered beside it and chosen per recipe without touching handlers.

Example:
    >>> get_backend("torch.ao").name
    'torch.ao'
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Iterator, Protocol, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

ENGINES = ("fbgemm", "qnnpack", "x86")


@contextlib.contextmanager
def quantized_engine(engine: str) -> Iterator[None]:
    """Set ``torch.backends.quantized.engine`` for the block (packing happens per engine)."""
    if engine not in torch.backends.quantized.supported_engines:
        raise RuntimeError(
            f"quantized engine {engine!r} is not supported by this torch build "
            f"(supported: {', '.join(torch.backends.quantized.supported_engines)})"
        )
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


_MODULE_TYPES: dict[str, type[nn.Module]] = {"Linear": nn.Linear, "LSTM": nn.LSTM, "GRU": nn.GRU}


class QuantBackend(Protocol):
    """What the quantization step handlers need from a quantization library."""

    name: str

    def quantize_dynamic(self, model: nn.Module, *, engine: str, per_channel: bool,
                         module_types: Sequence[str], keep_float: Sequence[str]) -> nn.Module:
        """Return a new model with weights int8 and activations quantized per batch at run time."""
        ...


_warned_deprecation = False


def _note_deprecation_once() -> None:
    # torch.ao prints a long DeprecationWarning on each first call site; say it once, in our words,
    # and let torch's own warning through once per process (Python's default), not on every job.
    global _warned_deprecation
    if not _warned_deprecation:
        _warned_deprecation = True
        log.info("quantizing with torch.ao.quantization (deprecated in torch 2.13; torchao backend can be added "
                 "beside it in modelpress.optimize.backends)")


class TorchAOQuantization:
    """``torch.ao.quantization`` (eager dynamic; FX static and QAT are added by their handlers)."""

    name = "torch.ao"

    def quantize_dynamic(self, model: nn.Module, *, engine: str, per_channel: bool,
                         module_types: Sequence[str], keep_float: Sequence[str]) -> nn.Module:
        from torch.ao.quantization import (
            default_dynamic_qconfig,
            per_channel_dynamic_qconfig,
            quantize_dynamic,
        )

        _note_deprecation_once()
        names = {n for n, _ in model.named_modules()}
        unknown = [k for k in keep_float if k not in names]
        if unknown:
            raise ValueError(f"keep_float names modules that do not exist: {', '.join(unknown)}")
        spec: dict[object, object] = {}
        for name, mod in model.named_modules():
            for t in module_types:
                if type(mod) is _MODULE_TYPES[t] and name not in keep_float:
                    # Per-channel dynamic qconfig exists for Linear only; RNNs use per-tensor.
                    spec[name] = per_channel_dynamic_qconfig if (per_channel and t == "Linear") else default_dynamic_qconfig
        with quantized_engine(engine):
            return quantize_dynamic(copy.deepcopy(model), spec, dtype=torch.qint8)


_BACKENDS: dict[str, QuantBackend] = {"torch.ao": TorchAOQuantization()}


def register_backend(backend: QuantBackend) -> None:
    """Make another quantization library selectable by name (e.g. a torchao ``quantize_`` path)."""
    _BACKENDS[backend.name] = backend


def get_backend(name: str = "torch.ao") -> QuantBackend:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown quantization backend {name!r}; known: {', '.join(_BACKENDS)}") from None

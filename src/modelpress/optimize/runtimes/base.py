"""The runtime interface: one small adapter per deployment runtime (torch, ONNX Runtime, OpenVINO).

A runtime turns a *float* torch model (after the torch-only steps: pruning, fine-tuning, distillation) into
a deployable artifact in its own format, quantized with that runtime's own toolchain, and serves it back as
a plain callable. Callers never branch on the runtime name: they ask the registry (``get_runtime``) and talk
to this interface. Heavy imports (onnxruntime, openvino, nncf) live inside the methods so that importing the
package costs nothing and a host without a runtime can still list it (``is_available`` says why not).

The flow for one job:

    >>> rt = get_runtime("onnxruntime")                                       # doctest: +SKIP
    >>> exp = rt.export(model, (x,), ["input"], workdir)                      # doctest: +SKIP
    >>> q = rt.quantize(exp, qcfg, calib, keep_float=[], workdir=workdir)     # doctest: +SKIP
    >>> nbytes = rt.save(q, workdir / "model.onnx")                           # doctest: +SKIP
    >>> fn = rt.load(workdir / "model.onnx", threads=1); fn(x).shape          # doctest: +SKIP

``Exported`` is opaque outside its runtime: ``handle`` is whatever that runtime works with (a torch module,
an ``onnx.ModelProto`` path, an ``openvino.Model``); only the runtime that made it reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

from modelpress.errors import UserInputError

if TYPE_CHECKING:  # the package imports no torch: a producer or a worker's start-up check can list runtimes
    import torch


class RuntimeUnavailableError(UserInputError, RuntimeError):
    """The runtime's package is missing (or unusable) on this host; the message says which and how to fix it.

    Not a user-input error and not worth a retry: another attempt on the same worker fails the same way.
    """


@dataclass
class Exported:
    """A model in one runtime's own representation, plus what later calls need to know about it.

    ``runtime`` names the adapter that made it; ``handle`` is that adapter's object (e.g. an ``onnx``
    model path, an ``openvino.Model``, a torch module); ``input_names`` are the forward's argument names in
    order; ``quantized`` says whether a quantize step has run; ``meta`` is JSON-able detail recorded on the
    job (quantization settings, nodes kept float, toolkit versions).

    Example:
        >>> Exported(runtime="torch", handle=None, input_names=["x"]).quantized
        False
    """

    runtime: str
    handle: Any
    input_names: list[str]
    quantized: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Runtime(Protocol):
    """What the pipeline needs from a deployment runtime. One adapter per runtime, registered by name."""

    name: str
    #: File suffix of the one-file artifact (".mpz", ".onnx", ".ovz").
    suffix: str

    def is_available(self) -> str | None:
        """None when this host can build and run the runtime's artifacts, else the reason (a sentence)."""
        ...

    def versions(self) -> dict[str, str]:
        """Versions of the packages the artifact depends on (goes into the artifact key and the job row)."""
        ...

    def export(self, model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...],
               input_names: Sequence[str], workdir: Path) -> Exported:
        """The float model in this runtime (eval mode; dynamic batch dimension). Never mutates ``model``."""
        ...

    def quantize(self, exported: Exported, qcfg: Any, calib: Sequence[tuple[torch.Tensor, ...]],
                 keep_float: Sequence[str], workdir: Path, tuning: Mapping[str, Any] | None = None) -> Exported:
        """A new quantized ``Exported`` from a float one, per the recipe's quantization step ``qcfg``.

        ``calib`` are calibration batches (never eval rows); ``keep_float`` names from ``layers`` stay float;
        ``tuning`` is one of ``tunings``' settings (None = the toolchain's defaults).
        Raises ``UserInputError`` for a ``qcfg`` this runtime cannot do (the message says what to change).
        """
        ...

    def tunings(self, exported: Exported, qcfg: Any) -> list[dict[str, Any]]:
        """Numerical settings of the quantizer worth trying beside its defaults, for this model and step.

        Each keeps the quantized graph (the same layers in int8, the same kernels), so it changes fidelity,
        not speed or bytes: the pipeline picks among them on selection rows only. Empty when there are none.
        """
        ...

    def variants(self, qcfg: Any) -> list[dict[str, Any]]:
        """Settings of the quantization step that change the graph (and so speed), each built as a candidate.

        Only for what the step leaves open (e.g. ``per_channel: None``): each dict updates ``qcfg``, and the
        job keeps the variant best at its objective among those keeping the budget on selection rows (the
        same rule ``auto`` applies across runtimes). ``[]`` means one candidate with ``qcfg`` as it is.
        """
        ...

    def layers(self, exported: Exported) -> list[str]:
        """Names of the quantizable layers, usable in ``keep_float`` (stable across export calls)."""
        ...

    def save(self, exported: Exported, path: Path) -> int:
        """Write ONE file holding everything a deployment needs (atomically); return its byte size."""
        ...

    # Optional: ``build_recipe(plan, extra) -> candidate record``. A runtime that can run every step of a
    # recipe itself, in any order (torch), builds a recipe naming it as one candidate this way instead of
    # export → quantize (``candidates.whole_recipe_builder``). Not part of the Protocol: the others lack it.

    def load(self, path: Path, threads: int) -> Callable[..., torch.Tensor]:
        """A callable with the model's forward signature (tensors in, one float tensor out), threads pinned.

        It may also have ``execution() -> dict``: what the runtime decided on this host that the file cannot
        fix (precision, kernels, providers). The pipeline records it with the candidate's timings.
        """
        ...


__all__ = ["Exported", "Runtime", "RuntimeUnavailableError"]

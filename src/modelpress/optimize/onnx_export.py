"""Optional ONNX export of a float model, checked by running it in onnxruntime.

``torch.onnx.export`` in torch 2.13 uses the dynamo exporter (needs the ``onnxscript`` package; install
``modelpress[onnx]``). torch.ao int8 modules have no exporter, so only float models (the input model, or a
pruned/distilled result) are exported; ``OnnxExportError`` says so up front instead of a long trace.

Trap guarded here (field notes): the exporter restores the *exported module's* train/eval mode on the whole
tree afterwards, so exporting a fresh wrapper (training mode by default) leaves the wrapped model in
training mode, with dropout on in every later measurement. Every module's mode is recorded before the
export and restored after, and a model that was in eval mode is asserted to still be in eval mode.

Example:
    >>> import torch, tempfile, pathlib
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.onnx"
    >>> rep = export_and_check(m, torch.randn(3, 4), p)  # doctest: +SKIP
    >>> rep.max_abs_diff < 1e-5  # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from modelpress.optimize.artifacts import atomic_write_bytes
from modelpress.optimize.backends import is_quantized_module
from modelpress.errors import UserInputError
from modelpress.optimize.measure import as_tuple
from modelpress.optimize.outputs import pack
from modelpress.optimize.spec import Inputs


class OnnxExportError(UserInputError):
    """The model cannot be exported (int8 torch.ao modules, missing packages); the message says what to do."""


@dataclass(frozen=True)
class OnnxReport:
    """What was exported and how closely onnxruntime reproduces the torch outputs."""

    path: str
    size_bytes: int
    input_names: list[str]
    output_names: list[str]
    dynamic_batch: bool
    check_batch_sizes: list[int]
    max_abs_diff: float
    mean_cosine: float
    export_seconds: float
    torch_version: str
    onnxruntime_version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def _modes_preserved(model: nn.Module) -> Iterator[None]:
    modes = {name: m.training for name, m in model.named_modules()}
    try:
        yield
    finally:
        for name, m in model.named_modules():
            if name in modes:
                m.training = modes[name]
    if not modes[""] and any(m.training for m in model.modules()):
        raise AssertionError("export left the model in training mode")


def _require_packages() -> None:
    missing = []
    for pkg in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(pkg)
        except ImportError:
            missing.append(pkg)
    if missing:
        raise OnnxExportError(f"ONNX export needs {', '.join(missing)}: pip install 'modelpress[onnx]'")


def export_onnx(model: nn.Module, example_inputs: Inputs, path: str | os.PathLike[str], *,
                input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
                dynamic_batch: bool = True) -> int:
    """Export float ``model`` (eval mode) to ``path`` atomically; returns the file's size in bytes.

    Example:
        >>> export_onnx(torch.nn.Linear(4, 2).eval(), torch.randn(2, 4), "/tmp/lin.onnx")  # doctest: +SKIP
        423
    """
    _require_packages()
    if any(is_quantized_module(m) for m in model.modules()):
        raise OnnxExportError("torch.onnx cannot export torch.ao int8 modules; export the float model and quantize "
                              "the ONNX file with onnxruntime.quantization.quantize_dynamic(per_channel=True)")
    if model.training:
        raise OnnxExportError("export a model in eval mode (call model.eval()): training mode exports dropout")
    args = as_tuple(example_inputs)
    names = list(input_names) if input_names else [f"input_{i}" for i in range(len(args))]
    if len(names) != len(args):
        raise OnnxExportError(f"{len(names)} input names for {len(args)} inputs")
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=4096)
        dynamic_shapes = tuple({0: batch} for _ in args)
    # The exporter prints progress lines at INFO through its own logger; keep worker logs readable.
    logging.getLogger("torch.onnx").setLevel(logging.WARNING)
    with _modes_preserved(model), torch.no_grad():
        if output_names is None:
            output_names = default_output_names(model(*args))
        program = torch.onnx.export(model, args, input_names=names, output_names=list(output_names),
                                    dynamic_shapes=dynamic_shapes, dynamo=True, verbose=False)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    # Serialise the proto ourselves so the write is atomic (ONNXProgram.save writes in place).
    data = program.model_proto.SerializeToString()
    p = Path(path)
    atomic_write_bytes(p, lambda f: f.write(data))
    return p.stat().st_size


def default_output_names(out: Any) -> list[str]:
    """``output`` for one output, ``output_0``, ``output_1``... for several (in the program's order).

    Example:
        >>> default_output_names(torch.zeros(1)), default_output_names((torch.zeros(1), torch.zeros(1)))
        (['output'], ['output_0', 'output_1'])
    """
    n = len(out) if isinstance(out, (tuple, list)) else 1
    return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]


def run_onnx(path: str | os.PathLike[str], inputs: Inputs, *, threads: int = 1) -> Any:
    """Run the ONNX file at ``path`` in onnxruntime (CPU, ``threads`` intra-op threads); its output(s).

    Example:
        >>> run_onnx("/tmp/lin.onnx", torch.randn(5, 4)).shape  # doctest: +SKIP
        torch.Size([5, 2])
    """
    _require_packages()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(os.fspath(path), sess_options=opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), as_tuple(inputs), strict=True)}
    outs = [torch.from_numpy(o) for o in sess.run(None, feeds)]
    return outs[0] if len(outs) == 1 else tuple(outs)


def export_and_check(model: nn.Module, example_inputs: Inputs, path: str | os.PathLike[str], *,
                     input_names: Sequence[str] | None = None, check_inputs: Sequence[Inputs] = (),
                     atol: float = 1e-3) -> OnnxReport:
    """Export ``model`` and compare onnxruntime's outputs with torch's on the example and ``check_inputs``.

    Raises ``RuntimeError`` when the outputs differ by more than ``atol`` (the export is wrong, not the input).

    Example:
        >>> rep = export_and_check(torch.nn.Linear(4, 2).eval(), torch.randn(2, 4), "/tmp/l.onnx")  # doctest: +SKIP
        >>> rep.max_abs_diff < 1e-5  # doctest: +SKIP
        True
    """
    import onnxruntime as ort

    t0 = time.perf_counter()
    size = export_onnx(model, example_inputs, path, input_names=input_names)
    seconds = time.perf_counter() - t0
    worst, cosines, batches = 0.0, [], []
    for inp in (example_inputs, *check_inputs):
        with torch.inference_mode():
            raw = model(*as_tuple(inp))
            ref = pack(raw)
        got = pack(run_onnx(path, inp))
        if got.shape != ref.shape:
            raise RuntimeError(f"onnxruntime output shape {tuple(got.shape)} != torch {tuple(ref.shape)}")
        worst = max(worst, float((got - ref).abs().max()))
        cosines.append(float(nn.functional.cosine_similarity(got.flatten(1), ref.flatten(1), dim=-1).mean()))
        batches.append(int(as_tuple(inp)[0].shape[0]))
    if worst > atol:
        raise RuntimeError(f"onnxruntime reproduces the model only to {worst:.3g} (tolerance {atol}): export bug")
    return OnnxReport(path=os.fspath(path), size_bytes=size,
                      input_names=list(input_names) if input_names else [f"input_{i}" for i in range(len(as_tuple(example_inputs)))],
                      output_names=default_output_names(raw), dynamic_batch=True, check_batch_sizes=batches, max_abs_diff=worst,
                      mean_cosine=sum(cosines) / len(cosines), export_seconds=seconds,
                      torch_version=torch.__version__, onnxruntime_version=ort.__version__)

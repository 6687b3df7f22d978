"""A ``torch.export`` program (``.pt2``) and tensor data, loaded without ever running the file's code.

Safety (issue 20; the rules and their reasons are in ``pt2_archive`` and docs/faults.md): torch never sees
the user's file. ``load_program`` checks it torch-free (allow-listed archive members, operators, fields),
writes a new archive of exactly the checked members into a private temporary folder (``rebuild_archive``:
no sample inputs, which torch would unpickle with a ``weights_only=False`` retry; no ``guards_code``,
which ``module()`` would ``exec``; the verifier chosen by modelpress, not by the file), and loads *that*
with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``. The loaded program is then checked again (``check_loaded``):
its nodes against the same operator allow-list, its signature for mutations, and torch's default
functional verifier on its functional form.

Quantizing it: ``program.module()`` is an unlifted ``GraphModule`` of ATen calls (``aten.linear``,
``aten.conv2d``, ``aten.batch_norm``) on parameters kept in plain container modules. ``torch.ao``'s
dynamic quantization swaps ``nn.Linear`` modules and FX static quantization matches module calls, so
neither sees anything to quantize in that graph. We *re-modularize* it: each container whose parameters
feed one ``aten.linear``/``conv2d``/``batch_norm`` becomes the ``nn.Linear``/``nn.Conv2d``/``nn.BatchNorm2d``
it was (same parameter names, so state dicts keep their keys), ``aten.relu``/``add`` become ``F.relu``/``+``,
and the pytree calling convention is replaced by plain positional arguments. Then the same eager dynamic
and FX static (with conv-bn-relu fusion) paths the zoo uses apply, giving real int8 kernels. The
alternative, pt2e from torchao, gave graphs 3-30x slower than float here without ``torch.compile``
(field notes), so it was not chosen.

Example:
    >>> from modelpress.optimize.sources.export import load_program  # doctest: +SKIP
    >>> gm = modularize(load_program("model.pt2").module())  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import fx, nn

from modelpress.errors import ModelLoadError, is_task_control
from modelpress.optimize.outputs import output_metric
from modelpress.optimize.sources.base import LoadedModel, ModelSource
from modelpress.optimize.sources.common import tiled_input
from modelpress.optimize.sources.data import TrainRows, check_labels, check_train_format, make_task_data, read_tensors
from modelpress.optimize.sources.pt2_archive import (
    MAX_PT2_BYTES,
    check_archive,
    rebuild_archive,
    short_op,
    target_allowed,
)
from modelpress.optimize.sources.ref import ModelRef
from modelpress.optimize.spec import ModelSpec


@contextlib.contextmanager
def _weights_only_everywhere() -> Iterator[None]:
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def scan_archive(path: str | Path, *, max_bytes: int = MAX_PT2_BYTES) -> None:
    """Refuse a .pt2 that holds anything but a plain CPU program (zip + JSON only; ``pt2_archive``).

    Example:
        >>> scan_archive("ranker.pt2")  # doctest: +SKIP
    """
    check_archive(path, max_bytes=max_bytes)


def serialized_target(target: Any) -> str:
    """A loaded node's target spelled as the graph JSON spells it (``torch.ops.aten.relu.default``).

    Example:
        >>> serialized_target(torch.ops.aten.relu.default), serialized_target(operator.getitem)
        ('torch.ops.aten.relu.default', '_operator.getitem')
    """
    if isinstance(target, torch._ops.OpOverload):
        return f"torch.ops.{target.namespace}.{target._opname}.{target._overloadname}"
    if target in (math.ceil, math.floor, math.trunc):
        return f"math.{target.__name__}"
    if getattr(target, "__module__", None) == "_operator":
        return f"_operator.{target.__name__}"
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__name__', repr(target))}"


_USER_OUTPUT, _INPUT_KINDS = "USER_OUTPUT", {"USER_INPUT", "PARAMETER", "BUFFER", "CONSTANT_TENSOR"}


def _check_graph(program: Any, name: str) -> None:
    for node in program.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        target = serialized_target(node.target) if node.op == "call_function" else f"{node.op} {node.target}"
        if node.op != "call_function" or not target_allowed(target):
            raise ModelLoadError(f"exported program {name}: node {node.name!r} calls {short_op(target)}, which is not "
                                 "one of the pure tensor operators modelpress runs")
    sig = program.graph_signature
    for spec in sig.input_specs:
        if spec.kind.name not in _INPUT_KINDS:
            raise ModelLoadError(f"exported program {name}: an input of kind {spec.kind.name} is not accepted")
    for spec in sig.output_specs:
        if spec.kind.name != _USER_OUTPUT:
            raise ModelLoadError(f"exported program {name}: output {spec.kind.name} ({spec.target or spec.arg}) "
                                 "changes an input, weight or buffer; modelpress only runs programs that leave "
                                 "them unchanged")


def check_loaded(program: Any, name: str) -> None:
    """The second gate, on what torch built: allow-listed nodes, no mutation, torch's functional verifier.

    A program with allow-listed in-place nodes (loaded under torch's TRAINING dialect) is functionalized
    (``run_decompositions({})``) first, so the default verifier and the mutation check see what its
    in-place nodes really do.

    Example:
        >>> check_loaded(torch.export.load("rebuilt.pt2"), "ranker.pt2")  # doctest: +SKIP
    """
    from torch._export.verifier import Verifier

    _check_graph(program, name)
    functional = program
    if program.verifier.dialect != "ATEN":
        functional = program.run_decompositions({})
        _check_graph(functional, name)
    Verifier().check(functional)


def load_program(path: str | Path, *, max_bytes: int = MAX_PT2_BYTES) -> Any:
    """The user's ``.pt2`` as an ``ExportedProgram``, loaded from a checked copy (see the module docstring).

    Example:
        >>> input_names(load_program("ranker.pt2"))  # doctest: +SKIP
        ['features']
    """
    name = Path(path).name
    with tempfile.TemporaryDirectory(prefix="modelpress-pt2-") as tmp:  # mkdtemp: mode 0700, this user only
        rebuilt = Path(tmp) / "program.pt2"
        rebuild_archive(path, rebuilt, max_bytes=max_bytes, label=name)
        try:
            with _weights_only_everywhere():
                program = torch.export.load(str(rebuilt))
            check_loaded(program, name)
        except ModelLoadError:
            raise
        except Exception as e:  # noqa: BLE001 - a load or verifier failure is the file's fault
            if is_task_control(e):
                raise
            raise ModelLoadError(f"exported program {name} could not be loaded safely "
                                 f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]})") from None
    return program


def input_names(program: Any) -> list[str]:
    """The user inputs' names, in order (the exported forward's argument names)."""
    return [s.arg.name for s in program.graph_signature.input_specs
            if s.kind.name == "USER_INPUT" and hasattr(s.arg, "name")]


_OUTPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")


def output_names(program: Any, count: int) -> list[str]:
    """The outputs' names, in the order the program returns them flattened: a returned dict's keys (when they
    are plain names), else ``output_0``, ``output_1``...

    Example:
        >>> output_names(None, 2)
        ['output_0', 'output_1']
    """
    spec = getattr(getattr(program, "call_spec", None), "out_spec", None)
    keys = list(getattr(spec, "context", None) or []) if getattr(spec, "type", None) in (dict,) else []
    flat = getattr(spec, "num_leaves", None) == len(keys)  # every value one tensor, not a nested container
    if flat and len(keys) == count and all(isinstance(k, str) and _OUTPUT_NAME.fullmatch(k) for k in keys):
        return [str(k) for k in keys]
    return [f"output_{i}" for i in range(count)]


# ----------------------------------------------------------------------------- re-modularize
_aten = torch.ops.aten


def _param_owner(gm: fx.GraphModule, node: Any, want: str) -> str | None:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    owner, _, leaf = str(node.target).rpartition(".")
    return owner if leaf == want else None


def _ndim(node: Any) -> int | None:
    v = node.meta.get("val") if isinstance(node, fx.Node) else None
    return v.ndim if isinstance(v, torch.Tensor) else None


def _tuple2(v: Any) -> Any:
    return tuple(v) if isinstance(v, (list, tuple)) else v


def modularize(gm: fx.GraphModule) -> fx.GraphModule:
    """Turn an unlifted exported graph into one of ``nn.Linear``/``Conv2d``/``BatchNorm`` module calls.

    Parameter names are kept (``fc.weight`` stays ``fc.weight``), the forward takes positional tensors
    and returns a tensor. Containers whose parameters feed more than one op are left as they are.
    """
    graph = gm.graph
    uses: dict[str, int] = {}
    for n in graph.nodes:
        if n.op == "get_attr":
            owner = str(n.target).rpartition(".")[0]
            uses[owner] = uses.get(owner, 0) + len(n.users)
    for n in list(graph.nodes):
        if n.op == "call_module" and str(n.target).startswith("_guards_fn"):
            graph.erase_node(n)
            continue
        if n.op != "call_function":
            continue
        new_mod: nn.Module | None = None
        owner: str | None = None
        if n.target is _aten.linear.default:
            x, w, b = (list(n.args) + [None])[:3]
            owner = _param_owner(gm, w, "weight")
            if owner and (b is None or _param_owner(gm, b, "bias") == owner) and uses.get(owner) == (1 if b is None else 2):
                W = gm.get_submodule(owner).weight
                new_mod = nn.Linear(W.shape[1], W.shape[0], bias=b is not None)
        elif n.target is _aten.conv2d.default:
            a = list(n.args) + [None, (1, 1), (0, 0), (1, 1), 1][len(n.args) - 2:]
            x, w, b, stride, padding, dilation, groups = a[:7]
            owner = _param_owner(gm, w, "weight")
            if owner and (b is None or _param_owner(gm, b, "bias") == owner) and uses.get(owner) == (1 if b is None else 2):
                W = gm.get_submodule(owner).weight
                new_mod = nn.Conv2d(W.shape[1] * groups, W.shape[0], tuple(W.shape[2:]), stride=_tuple2(stride),
                                    padding=_tuple2(padding) if not isinstance(padding, str) else padding,
                                    dilation=_tuple2(dilation), groups=groups, bias=b is not None)
        elif n.target is _aten.batch_norm.default and len(n.args) >= 8 and n.args[5] is False:
            x, w, b, rm, rv, _training, momentum, eps = n.args[:8]
            owner = _param_owner(gm, w, "weight")
            nd = _ndim(x)
            if (owner and _param_owner(gm, b, "bias") == owner and _param_owner(gm, rm, "running_mean") == owner
                    and _param_owner(gm, rv, "running_var") == owner and nd in (2, 3, 4)):
                W = gm.get_submodule(owner).weight
                cls = nn.BatchNorm2d if nd == 4 else nn.BatchNorm1d
                new_mod = cls(W.shape[0], eps=float(eps), momentum=float(momentum))
        elif n.target in (_aten.relu.default, _aten.relu_.default):
            n.target = nn.functional.relu
            continue
        elif n.target is _aten.add.Tensor and len(n.args) == 2 and not n.kwargs:
            n.target = operator.add
            continue
        elif n.target is _aten.flatten.using_ints:
            n.target = torch.flatten
            continue
        elif n.target is _aten.adaptive_avg_pool2d.default:
            n.target = nn.functional.adaptive_avg_pool2d
            continue
        elif n.target is _aten.max_pool2d.default:
            n.target = nn.functional.max_pool2d
            continue
        if new_mod is None or owner is None:
            continue
        old = gm.get_submodule(owner)
        with torch.no_grad():
            sd = {k: v for k, v in list(old.named_parameters(recurse=False)) + list(old.named_buffers(recurse=False))}
            new_mod.load_state_dict(sd, strict=False)
            for k, v in sd.items():  # keep the very tensors (and any extra buffer such as num_batches_tracked)
                if isinstance(v, nn.Parameter):
                    setattr(new_mod, k, v)
                else:
                    new_mod.register_buffer(k, v)
        parent, _, leaf = owner.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, new_mod.eval())
        with graph.inserting_before(n):
            m = graph.call_module(owner, (n.args[0],))
        m.meta = dict(n.meta)
        n.replace_all_uses_with(m)
        graph.erase_node(n)
    # Positional in, tensor out: the pytree calling convention is for export's own runner.
    graph._codegen = fx.graph.CodeGen()
    out = next(n for n in graph.nodes if n.op == "output")
    res = out.args[0]
    if isinstance(res, (tuple, list)) and len(res) == 1:
        out.args = (res[0],)
    graph.eliminate_dead_code()
    root = nn.Module()
    for name, child in gm.named_children():
        if not name.startswith("_guards_fn"):
            root.add_module(name, child)
    for name, p in gm.named_parameters(recurse=False):
        root.register_parameter(name, p)
    for name, b in gm.named_buffers(recurse=False):
        root.register_buffer(name, b)
    new = fx.GraphModule(root, graph, class_name="ExportedModule")
    new.graph.lint()
    return new.eval()


class ExportSource(ModelSource):
    """``export:FILE.pt2`` written by ``torch.export.save``, with tensor data (eval, and optionally calibration and
    train, each in the same format) named after its inputs."""

    def check(self, ref: ModelRef) -> list[str]:
        problems = super().check(ref)
        if not problems:
            try:
                check_archive(ref.path or "")
            except ModelLoadError as e:
                problems.append(str(e))
        return problems

    def build(self, ref: ModelRef) -> nn.Module:
        assert ref.path
        return modularize(load_program(ref.path).module())

    def load(self, ref: ModelRef) -> LoadedModel:
        assert ref.path and ref.data
        program = load_program(ref.path)
        names = input_names(program)
        model = modularize(program.module())
        # The outputs are known once the program has run: probe it on the eval file's first rows (read again
        # below with the outputs' names, which a program with several outputs' labels are keyed by).
        probe_x, _ = read_tensors(ref.data.eval, names, ignore_labels=True)
        with torch.no_grad():
            try:
                probe = model(*(t[:2] for t in probe_x))
            except Exception as e:  # noqa: BLE001 - shapes/dtypes the program does not accept
                raise ModelLoadError(f"the exported program does not accept the eval data's tensors "
                                     f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]})") from None
        del probe_x
        outs = _probe_outputs(probe)
        out_names = output_names(program, len(outs)) if len(outs) > 1 else None
        if out_names is None and ref.primary_output is not None:
            raise ModelLoadError(f"primary_output {ref.primary_output!r} was given, and the program has one output")

        def read(path: str) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
            return read_tensors(path, names, output_names=out_names)

        x, y = read(ref.data.eval)
        calib = read(ref.data.calibration) if ref.data.calibration else None
        train = None
        if ref.data.train:
            tx, ty = read(ref.data.train)
            check_train_format(tx, x, names, f"train data {Path(ref.data.train).name}")
            train = TrainRows(tx, ty, Path(ref.data.train).name)
        files = [(y, Path(ref.data.eval).name)] + ([(calib[1], Path(ref.data.calibration or "").name)] if calib else [])
        files += [(train.labels, train.name)] if train is not None else []
        metric: Any
        if out_names is None:
            classes = int(outs[0].shape[-1])
            for labels, where in files:
                check_labels(labels, classes, where)
            metric = ref.metric or ("accuracy" if y is not None else "top1_agreement")
        else:
            for labels, where in files:
                for i, o in enumerate(outs):
                    if labels is not None and bool((labels[:, i] >= 0).any()):
                        check_labels(labels[:, i][labels[:, i] >= 0], int(o.shape[-1]), f"{where} (labels.{out_names[i]})")
            labelled = {n: i for i, n in enumerate(out_names) if y is not None and bool((y[:, i] >= 0).all())}
            if y is not None and len(labelled) < int((y >= 0).any(0).sum()):
                raise ModelLoadError(f"data file {Path(ref.data.eval).name}: labels of an output must be given "
                                     "for every row (or for none)")
            try:
                metric = output_metric(outs, out_names, primary=ref.primary_output, primary_metric=ref.metric,
                                       labelled=labelled)
            except ValueError as e:
                raise ModelLoadError(str(e)) from None
            if y is not None and not labelled:
                y = None
        td = make_task_data(x, y, calib, what=Path(ref.data.eval).name, train=train)
        described = f" (outputs {out_names}, {metric} carries the budget)" if out_names else ""
        spec = ModelSpec(
            name=ref.display_name, version=1, build=lambda: self.build(ref), data=lambda: td, metric=metric,
            make_input=tiled_input(td.eval_inputs), latency_batches=ref.latency_batches,
            description=f"exported program {Path(ref.path).name} (inputs {names}){described}; {td.description}",
            extra={"source": "export", "input_names": names, "eval_batch_size": 64,
                   **({"output_names": out_names} if out_names else {})},
        )
        return LoadedModel(model, spec)


def _probe_outputs(probe: Any) -> list[torch.Tensor]:
    """A program's outputs on the probe rows: one tensor, or several, each with the batch as first dimension."""
    if isinstance(probe, torch.Tensor):
        return [probe]
    outs = list(probe.values()) if isinstance(probe, dict) else list(probe) if isinstance(probe, (tuple, list)) else []
    if not outs or not all(isinstance(t, torch.Tensor) for t in outs):
        raise ModelLoadError(f"the exported program must return tensors (one, or a tuple, list or dict of them), "
                             f"not {type(probe).__name__}")
    if len(outs) == 1:
        return outs
    if any(t.ndim == 0 or int(t.shape[0]) != 2 for t in outs):
        raise ModelLoadError("every output of the program needs the batch as its first dimension (2 rows gave "
                             f"shapes {[tuple(t.shape) for t in outs]})")
    if any(not t.is_floating_point() for t in outs):
        raise ModelLoadError("every output of the program must be a float tensor (got "
                             f"{[str(t.dtype).replace('torch.', '') for t in outs]}); return indices as scores")
    return outs


__all__ = ["ExportSource", "check_loaded", "input_names", "load_program", "modularize", "scan_archive",
           "serialized_target"]

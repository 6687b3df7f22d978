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
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import fx, nn

from modelpress.errors import ModelLoadError, is_task_control
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
        x, y = read_tensors(ref.data.eval, names)
        calib = read_tensors(ref.data.calibration, names) if ref.data.calibration else None
        train = None
        if ref.data.train:
            tx, ty = read_tensors(ref.data.train, names)
            check_train_format(tx, x, names, f"train data {Path(ref.data.train).name}")
            train = TrainRows(tx, ty, Path(ref.data.train).name)
        with torch.no_grad():
            try:
                probe = model(*(t[:2] for t in x))
            except Exception as e:  # noqa: BLE001 - shapes/dtypes the program does not accept
                raise ModelLoadError(f"the exported program does not accept the eval data's tensors "
                                     f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]})") from None
        if not isinstance(probe, torch.Tensor):
            raise ModelLoadError("the exported program must return one tensor (logits or an embedding)")
        classes = int(probe.shape[-1])
        check_labels(y, classes, Path(ref.data.eval).name)
        if calib is not None:
            check_labels(calib[1], classes, Path(ref.data.calibration or "").name)
        if train is not None:
            check_labels(train.labels, classes, train.name)
        td = make_task_data(x, y, calib, what=Path(ref.data.eval).name, train=train)
        metric = ref.metric or ("accuracy" if y is not None else "top1_agreement")
        spec = ModelSpec(
            name=ref.display_name, version=1, build=lambda: self.build(ref), data=lambda: td, metric=metric,
            make_input=tiled_input(td.eval_inputs), latency_batches=ref.latency_batches,
            description=f"exported program {Path(ref.path).name} (inputs {names}); {td.description}",
            extra={"source": "export", "input_names": names, "eval_batch_size": 64},
        )
        return LoadedModel(model, spec)


__all__ = ["ExportSource", "check_loaded", "input_names", "load_program", "modularize", "scan_archive",
           "serialized_target"]

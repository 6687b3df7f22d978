"""ONNX Runtime: torch.onnx export → ``quant_pre_process`` → ``quantize_static`` (QDQ) / ``quantize_dynamic``.

Configured as ONNX Runtime's quantization docs recommend for x86 CPUs: pre-process first (symbolic shape
inference + graph optimisation, which also fuses MatMul+Add into Gemm-able patterns), then per-channel int8
weights; static QDQ with uint8 activations and MinMax calibration over the calibration batches (U8S8 is the
format the VNNI kernels take), dynamic int8 for Linear-heavy models. Layers kept float go to
``nodes_to_exclude``; after a static quantization their weights, and embedding tables, are still stored int8
and dequantized in the graph (``int8_weight_only``), as the OpenVINO adapter does after NNCF.

Layer names: ``layers`` lists the quantizable nodes (MatMul/Gemm/Conv/Gather) by the *torch module* they came
from (the dynamo exporter records it in each node's ``pkg.torch.onnx.name_scopes`` metadata), so the same
``keep_float`` names work in every runtime; a node with no module falls back to its ONNX node name.

The artifact is one ``.onnx`` file (weights inside; < 2 GB), served with onnxruntime alone:

    import onnxruntime as ort
    sess = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input_0": x})[0]

Example:
    >>> OnnxRuntime().name
    'onnxruntime'
"""

from __future__ import annotations

import ast
import functools
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from modelpress.errors import UserInputError
from modelpress.optimize.recipes import per_channel_weights
from modelpress.optimize.runtimes.base import Exported, RuntimeUnavailableError

QUANT_OPS = ("MatMul", "Gemm", "Conv")


class OnnxRuntime:
    """ONNX Runtime CPU execution provider, quantized with ``onnxruntime.quantization``."""

    name = "onnxruntime"
    suffix = ".onnx"

    def is_available(self) -> str | None:
        missing = []
        for pkg in ("onnx", "onnxscript", "onnxruntime"):
            try:
                __import__(pkg)
            except ImportError:
                missing.append(pkg)
        if missing:
            return f"{', '.join(missing)} not installed (pip install 'modelpress[onnx]')"
        return None

    def _require(self) -> None:
        reason = self.is_available()
        if reason:
            raise RuntimeUnavailableError(f"runtime 'onnxruntime' is not usable here: {reason}")

    def versions(self) -> dict[str, str]:
        self._require()
        import onnx
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "torch": torch.__version__}

    # ------------------------------------------------------------------ build
    def export(self, model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...],
               input_names: Sequence[str], workdir: Path) -> Exported:
        self._require()
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from modelpress.optimize.onnx_export import export_onnx

        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        raw = workdir / "float.onnx"
        export_onnx(model, example_inputs, raw, input_names=list(input_names))
        # The float model served and the one quantized are the pre-processed graph (same function, fused ops),
        # so "float in onnxruntime" and the int8 artifact differ only by quantization.
        pre = workdir / "float-pre.onnx"
        import onnx

        # Pre-processing drops the nodes' metadata (where the torch module names are) but keeps node names:
        # read the module of each node from the raw export.
        raw_nodes = onnx.load(str(raw), load_external_data=False).graph.node
        meta: dict[str, Any] = {"preprocessed": True,
                                "node_modules": {n.name: m for n in raw_nodes if (m := _module_of(n))}}
        try:
            quant_pre_process(str(raw), str(pre))
        except Exception as e:  # noqa: BLE001 - ORT's symbolic shape inference fails on some graphs (BERT: Expand)
            # Its docs' advice for that case: skip the symbolic pass, keep ONNX shape inference + optimisation.
            quant_pre_process(str(raw), str(pre), skip_symbolic_shape=True)
            meta["symbolic_shape_inference"] = f"skipped ({type(e).__name__}: {str(e)[:200]})"
        return Exported(runtime=self.name, handle=str(pre), input_names=list(input_names), meta=meta)

    def _node_names(self, exported: Exported) -> dict[str, list[str]]:
        """Layer name → ONNX node names (a torch module may give several nodes, e.g. MatMul + Add)."""
        import onnx

        modules = exported.meta.get("node_modules", {})
        model = onnx.load(exported.handle, load_external_data=False)
        inits = {i.name for i in model.graph.initializer}
        out: dict[str, list[str]] = {}
        for node in model.graph.node:
            # Layers with weights only (as in the other runtimes): a MatMul of two activations (attention
            # scores) is not a layer a user can name, and a Gather of an initializer is an embedding table.
            if node.op_type in QUANT_OPS:
                if len(node.input) < 2 or node.input[1] not in inits:
                    continue
            elif node.op_type != "Gather" or not node.input or node.input[0] not in inits:
                continue
            out.setdefault(modules.get(node.name) or _module_of(node) or node.name, []).append(node.name)
        return out

    def tunings(self, exported: Exported, qcfg: Any) -> list[dict[str, Any]]:
        """None worth trying: the recipe's step already names this toolchain's settings."""
        return []

    def variants(self, qcfg: Any) -> list[dict[str, Any]]:
        """Per-channel and per-tensor weights when the step leaves ``per_channel`` open (None).

        Neither wins everywhere: per-channel is usually more faithful; per-tensor lets MLAS run the fused
        int8 GEMM with one scale. Measured on the seed MLP (AVX-512 VNNI, 1 thread, dynamic int8): per-tensor
        b1 0.0172 / b64 0.2233 ms, per-channel 0.0203 / 0.2302 ms; the job measures which one to keep.

        Example:
            >>> from modelpress.optimize.recipes import DynamicQuantConfig
            >>> rt = OnnxRuntime()
            >>> rt.variants(DynamicQuantConfig()), rt.variants(DynamicQuantConfig(per_channel=True))
            ([{'per_channel': True}, {'per_channel': False}], [])
        """
        kind = getattr(qcfg, "type", None)
        if kind in ("quantize_dynamic", "quantize_static") and getattr(qcfg, "per_channel", True) is None:
            return [{"per_channel": True}, {"per_channel": False}]
        return []

    def layers(self, exported: Exported) -> list[str]:
        return sorted(self._node_names(exported))

    def quantize(self, exported: Exported, qcfg: Any, calib: Sequence[tuple[torch.Tensor, ...]],
                 keep_float: Sequence[str], workdir: Path, tuning: Mapping[str, Any] | None = None) -> Exported:
        self._require()
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

        names = self._node_names(exported)
        unknown = [k for k in keep_float if not any(n == k or n.startswith(k + ".") for n in names)]
        if unknown:
            raise UserInputError(f"keep_float names no quantizable layer of the ONNX model: {', '.join(unknown)}; "
                                 f"layers: {', '.join(sorted(names))[:400]}")
        exclude = sorted({node for n, nodes in names.items() for node in nodes
                          if any(n == k or n.startswith(k + ".") for k in keep_float)})
        kind = getattr(qcfg, "type", None)
        per_channel = per_channel_weights(qcfg)  # None: per-channel (``variants`` offers both)
        out = Path(workdir) / f"q-{kind}-{len(exclude)}-{os.getpid()}.onnx"
        if kind == "quantize_dynamic":
            ops = ["MatMul", "Gemm"] + (["Gather"] if getattr(qcfg, "quantize_embeddings", False) else [])
            # uint8 activations × int8 weights can saturate in ORT's int16 intermediate (measured on this kind of
            # CPU: the seed MLP's top-1 agreement fell to 0.86; ORT's docs name reduce_range as the fix). Unless
            # the recipe says, 7-bit weights are used exactly where the probe measures the kernel inexact.
            reduce_range = _reduce_range(qcfg)
            quantize_dynamic(exported.handle, str(out), op_types_to_quantize=ops, per_channel=per_channel,
                             reduce_range=reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
            meta = {"method": "quantize_dynamic", "op_types": ops, "reduce_range": reduce_range}
        elif kind == "quantize_static":
            if not calib:
                raise UserInputError("quantize_static in onnxruntime needs calibration inputs; the model has none")
            n = getattr(qcfg, "calibration_batches", len(calib))
            # In a transformer, ORT's default op list also puts Q/DQ around LayerNorm, Softmax, the residual Adds
            # and the activation×activation attention MatMuls; measured on MiniLM that gave cosine 0.39. There
            # only the weighted layers are quantized (what the other runtimes do); CNNs keep ORT's defaults.
            weighted = sorted({node for nodes in names.values() for node in nodes} - set(exclude))
            transformer = _has_ops(exported.handle, ("LayerNormalization", "Softmax"))
            # The Q/DQ pairs fuse into the same u8×s8 MLAS kernel as the dynamic path, so the same saturation
            # hits here: measured on an AVX2-only host, the seed MLP's static top-1 agreement was 0.858 with
            # 8-bit weights and 0.975 with 7-bit ones at the same speed (ORT's docs name reduce_range or U8U8;
            # U8U8 ran 1.4× slower there).
            reduce_range = _reduce_range(qcfg)
            quantize_static(exported.handle, str(out), _Reader(exported.input_names, calib[:n]),
                            quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=list(QUANT_OPS) if transformer else None,
                            nodes_to_quantize=weighted if transformer else None,
                            nodes_to_exclude=exclude)
            meta = {"method": "quantize_static", "format": "QDQ", "activation": "uint8", "reduce_range": reduce_range,
                    "calibration_batches": min(n, len(calib)), "weighted_layers_only": transformer}
            if getattr(qcfg, "float_layer_weights", "int8") == "int8":
                # As the OpenVINO adapter does after NNCF: layers kept out of int8 *activations* (the fallback's,
                # the recipe's keep_float) and embedding tables still store int8 weights, dequantized in the
                # graph. Measured on all-MiniLM-L6-v2 with its six FFN output layers kept float: 68.6 MB →
                # 22.96 MB (0.25× float), cosine 0.9911 → 0.9909, b32 not slower.
                wo = Path(workdir) / f"wo-{out.name}"
                gathers = {nd for nodes in names.values() for nd in nodes}  # only Gathers of tables qualify
                meta["weight_only_int8"] = int8_weight_only(str(out), str(wo), weight_nodes=set(exclude),
                                                            gather_nodes=gathers)
                out = wo
        else:
            raise UserInputError(f"runtime 'onnxruntime' cannot run a {kind!r} step (it quantizes with "
                                 f"quantize_dynamic or quantize_static); use runtime 'torch' for it")
        meta.update({"per_channel": per_channel, "weight": "int8", "nodes_excluded": exclude,
                     "float_layers": list(keep_float)})
        return Exported(runtime=self.name, handle=str(out), input_names=exported.input_names, quantized=True,
                        meta=meta)

    # ------------------------------------------------------------------ deploy
    def save(self, exported: Exported, path: Path) -> int:
        from modelpress.optimize.artifacts import atomic_write_bytes

        src = Path(exported.handle)
        # Record the runtime versions in the file itself (ONNX metadata_props), so the artifact carries them.
        import onnx

        model = onnx.load(str(src))
        for k, v in {"modelpress.runtime": self.name, **{f"modelpress.{k}": v for k, v in self.versions().items()}}.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
        data = model.SerializeToString()
        path = Path(path)
        atomic_write_bytes(path, lambda f: f.write(data))
        return path.stat().st_size

    def load(self, path: Path, threads: int) -> Callable[..., torch.Tensor]:
        self._require()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(os.fspath(path), sess_options=opts, providers=["CPUExecutionProvider"])
        return OnnxCallable(sess)


def int8_weight_only(src: str, dst: str, *, weight_nodes: set[str], gather_nodes: set[str]) -> dict[str, Any]:
    """Store still-float weights of ``weight_nodes`` (MatMul/Gemm/Conv) and tables of ``gather_nodes`` as int8.

    A weight becomes an int8 initializer with a per-output-channel scale and a ``DequantizeLinear`` in front of
    its (float) op: the layer computes in float as before, its bytes shrink 4×. An embedding table becomes
    int8 rows with one scale per row, gathered as int8 and scaled after the lookup, so no call dequantizes
    the whole table. Symmetric (zero point 0), round to nearest. Nodes whose weight is not a float
    initializer (already quantized, or computed) are left alone. Returns what was converted.

    Example:
        >>> int8_weight_only("q.onnx", "wo.onnx", weight_nodes={"node_MatMul_7"}, gather_nodes=set())  # doctest: +SKIP
        {'weights': 1, 'tables': 0}
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(src)
    g = model.graph
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:  # per-axis DequantizeLinear and Unsqueeze-with-axes-input need opset 13
        onnx.save(model, dst)
        return {"weights": 0, "tables": 0, "skipped": f"opset {opset} < 13"}
    inits = {i.name: i for i in g.initializer}

    def is_float_init(name: str) -> bool:
        return name in inits and inits[name].data_type == TensorProto.FLOAT

    nodes: list[Any] = []
    done: dict[str, str] = {}
    counts = {"weights": 0, "tables": 0}
    for n in list(g.node):
        if n.name in weight_nodes and n.op_type in ("MatMul", "Gemm", "Conv") and len(n.input) > 1 \
                and is_float_init(n.input[1]):
            wname = n.input[1]
            if wname not in done:
                w = numpy_helper.to_array(inits[wname]).astype(np.float32)
                trans_b = any(a.name == "transB" and a.i for a in n.attribute)
                # Output channels: MatMul [K, N] → N; Gemm with transB [N, K] → N on axis 0; Conv [O, I, ...] → O.
                axis = 0 if (n.op_type == "Conv" or (n.op_type == "Gemm" and trans_b)) else w.ndim - 1
                if w.ndim < 2:
                    nodes.append(n)
                    continue
                other = tuple(i for i in range(w.ndim) if i != axis)
                scale = np.maximum(np.abs(w).max(axis=other), np.finfo(np.float32).tiny) / 127.0
                shape = [1] * w.ndim
                shape[axis] = -1
                q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
                base = f"{wname}.int8"
                g.initializer.extend([numpy_helper.from_array(q, base),
                                      numpy_helper.from_array(scale.astype(np.float32), f"{base}.scale"),
                                      numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{base}.zero")])
                nodes.append(helper.make_node("DequantizeLinear", [base, f"{base}.scale", f"{base}.zero"],
                                              [f"{base}.dq"], name=f"{base}.dq", axis=axis))
                done[wname] = f"{base}.dq"
                counts["weights"] += 1
            n.input[1] = done[wname]
            nodes.append(n)
        elif n.name in gather_nodes and n.op_type == "Gather" and is_float_init(n.input[0]) \
                and not any(a.name == "axis" and a.i != 0 for a in n.attribute):
            table = numpy_helper.to_array(inits[n.input[0]]).astype(np.float32)
            if table.ndim != 2:
                nodes.append(n)
                continue
            scale = np.maximum(np.abs(table).max(axis=1), np.finfo(np.float32).tiny) / 127.0
            q = np.clip(np.rint(table / scale[:, None]), -127, 127).astype(np.int8)
            base = f"{n.input[0]}.int8rows"
            g.initializer.extend([numpy_helper.from_array(q, base),
                                  numpy_helper.from_array(scale.astype(np.float32), f"{base}.scale"),
                                  numpy_helper.from_array(np.array([-1], np.int64), f"{base}.axes")])
            ids, b = n.input[1], n.name
            nodes += [helper.make_node("Gather", [base, ids], [f"{b}.q"], name=f"{b}.q", axis=0),
                      helper.make_node("Cast", [f"{b}.q"], [f"{b}.f"], name=f"{b}.f", to=TensorProto.FLOAT),
                      helper.make_node("Gather", [f"{base}.scale", ids], [f"{b}.s"], name=f"{b}.s", axis=0),
                      helper.make_node("Unsqueeze", [f"{b}.s", f"{base}.axes"], [f"{b}.s1"], name=f"{b}.s1"),
                      helper.make_node("Mul", [f"{b}.f", f"{b}.s1"], [n.output[0]], name=b)]
            counts["tables"] += 1
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    used = {x for nd in g.node for x in nd.input} | {o.name for o in g.output}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    onnx.save(model, dst)
    return counts


def _reduce_range(qcfg: Any) -> bool:
    """7-bit weights unless the recipe says: exactly where the probe measures the 8-bit kernel inexact."""
    rr = getattr(qcfg, "reduce_range", None)
    return (not s8_matmul_exact()) if rr is None else bool(rr)


@functools.lru_cache(maxsize=None)
def s8_matmul_exact() -> bool:
    """Whether ORT's int8 MatMul is exact with full 8-bit weights (no int16 saturation), measured.

    Dynamic and static QDQ graphs both run MLAS's u8×s8 GEMM, so one probe decides ``reduce_range`` for both.

    Worst case: weights at ±127 and activations at 255 (as ``backends.full_range_activations_exact``).

    Example:
        >>> isinstance(s8_matmul_exact(), bool)  # doctest: +SKIP
        True
    """
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(0)
    w = (rng.integers(0, 2, (256, 32)) * 2 - 1).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 32])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory() as d:
        onnx.save(model, f"{d}/f.onnx")
        quantize_dynamic(f"{d}/f.onnx", f"{d}/q.onnx", weight_type=QuantType.QInt8, per_channel=True)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(f"{d}/q.onnx", sess_options=opts, providers=["CPUExecutionProvider"])
        x = (rng.random((8, 256)) + 5.0).astype(np.float32)
        y = sess.run(None, {"x": x})[0]
    ref = x @ w
    return float(np.abs(y - ref).max() / np.abs(ref).max()) < 0.02


class OnnxCallable:
    """``f(*tensors) -> tensor`` over an onnxruntime session, as torch tensors (a tuple for several outputs)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]

    def __call__(self, *args: torch.Tensor) -> Any:
        if len(args) != len(self.input_names):
            raise TypeError(f"expected {len(self.input_names)} inputs ({', '.join(self.input_names)}), got {len(args)}")
        feeds = {n: a.detach().cpu().numpy() for n, a in zip(self.input_names, args)}
        outs = [torch.from_numpy(o) for o in self.session.run(None, feeds)]
        return outs[0] if len(outs) == 1 else tuple(outs)  # a program with several outputs gets them all

    def execution(self) -> dict[str, Any]:
        """The session's execution providers and threads, as recorded beside the candidate's timings.

        Example (``fn = OnnxRuntime().load(path, 1)``)::

            fn.execution()   # {'providers': ['CPUExecutionProvider'], 'threads': 1}
        """
        opts = self.session.get_session_options()
        return {"providers": list(self.session.get_providers()), "threads": int(opts.intra_op_num_threads)}


class _Reader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over calibration batches (fresh per pass)."""

    def __init__(self, names: Sequence[str], batches: Sequence[tuple[torch.Tensor, ...]]) -> None:
        self._items = [{n: t.numpy() for n, t in zip(names, b)} for b in batches]
        self._it = iter(self._items)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def _has_ops(path: str, ops: Sequence[str]) -> bool:
    import onnx

    return any(n.op_type in ops for n in onnx.load(path, load_external_data=False).graph.node)


def _module_of(node: Any) -> str | None:
    # The dynamo exporter stores the torch module path of each node as a list of name scopes.
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return None
            # ['', 'encoder', 'encoder.layer.0', ..., 'linear_3']: full module paths, then the op's own name.
            return scopes[-2] if len(scopes) >= 3 and scopes[-2] else None
    return None


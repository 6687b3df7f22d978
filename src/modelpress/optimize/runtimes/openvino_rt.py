"""The OpenVINO runtime: ``openvino.convert_model`` from the float torch model, int8 with NNCF, a one-file IR.

Toolchain, as OpenVINO's and NNCF's documentation recommend it:

- export: ``openvino.convert_model(model, example_input=..., input=[(name, shape with a dynamic batch,
  type)])`` — the batch dimension stays dynamic, the other dimensions keep the example's (static) sizes, which
  is what lets the CPU plugin pick its fastest kernels for a fixed sequence length;
- ``quantize_static`` → ``nncf.quantize`` (activations and weights int8, calibration batches from the job's
  calibration rows), with ``model_type=TRANSFORMER`` when the graph has attention (Softmax + LayerNorm-like
  MVN), which makes NNCF keep the known-sensitive transformer spots in float and apply SmoothQuant;
- ``quantize_dynamic`` and ``quantize_weights`` (weight-only) → ``nncf.compress_weights(mode=INT8_ASYM)``:
  int8 weights, float activations (OpenVINO has no "dynamic int8" IR; on CPU its plugin decides about
  activation precision at run time) — the closest match to what those steps promise;
- layers kept float (the pipeline's fallback) → ``nncf.IgnoredScope(names=[...])`` with the exact node
  names of those layers' weighted ops: their activations stay float; after a static quantization their
  weights are still stored int8 weight-only (``nncf.compress_weights``), which keeps nearly all the accuracy
  a float layer gives back at none of its bytes (a step config with ``float_layer_weights="float"`` opts out).

Layer names (``layers``) are the torch module names recovered from the node names ``convert_model``
writes (``__module.bert.encoder.layer.0.output.dense/aten::linear/MatMul`` → ``bert.encoder.layer.0.output.dense``),
so a name kept float means the same layer in every runtime.

The artifact (``.ovz``) is ONE uncompressed zip holding ``model.xml`` + ``model.bin`` (the IR) and
``modelpress.json`` (input names, versions, quantization detail). It serves with OpenVINO alone::

    import zipfile, numpy as np, openvino as ov
    z, core = zipfile.ZipFile("model.ovz"), ov.Core()
    m = core.compile_model(core.read_model(z.read("model.xml").decode(),
                                           ov.Tensor(np.frombuffer(z.read("model.bin"), np.uint8))), "CPU")

Example:
    >>> rt = OpenVinoRuntime()
    >>> rt.name, rt.suffix
    ('openvino', '.ovz')
"""

from __future__ import annotations

import copy
import json
import re
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from modelpress.errors import ModelLoadError, RecipeError
from modelpress.optimize.runtimes.base import Exported, RuntimeUnavailableError

FORMAT = "modelpress-openvino-ir/1"
XML, BIN, META = "model.xml", "model.bin", "modelpress.json"
# Ops that hold a layer's weights; their node names map back to torch module names.
_WEIGHTED_OPS = {"MatMul", "Convolution", "GroupConvolution", "ConvolutionBackpropData"}
# The same layers as the CPU plugin's runtime graph names them: a MatMul with constant weights becomes
# FullyConnected; a MatMul left as MatMul multiplies two activations (attention) and holds no weights.
_RUNTIME_WEIGHTED = {"FullyConnected", "Convolution", "GroupConvolution", "Deconvolution"}
# "__module.features.0/aten::_convolution/Convolution" → "features.0"; "__module.fc/aten::linear/MatMul" → "fc"
# Only nn.Linear / nn.Conv* ops: an ``aten::matmul`` of two activations (attention) has no weights to quantize.
_MODULE_RE = re.compile(r"^__module\.([^/]+)/aten::(linear|_convolution|conv\dd|addmm)/")
# Weight-only steps: what OpenVINO can honestly offer for "dynamic" int8 (see the module docstring).
_WEIGHT_ONLY = {"quantize_dynamic", "quantize_weights", "quantize_weight_only"}
_STATIC = {"quantize_static"}
#: SmoothQuant strengths tried beside NNCF's default on a transformer's static int8 (``tunings``);
#: the job keeps the best on its selection rows.
SMOOTH_QUANT_ALPHAS = (0.85, 0.75, 0.65)


def _ov() -> Any:
    try:
        import openvino
    except ImportError:
        raise RuntimeUnavailableError("openvino is not installed: pip install 'modelpress[openvino]'") from None
    return openvino


def _nncf() -> Any:
    try:
        import nncf
    except ImportError:
        raise RuntimeUnavailableError("nncf is not installed: pip install 'modelpress[openvino]'") from None
    return nncf


def _fold_weights_at_load(ov_model: Any) -> int:
    """Make the CPU plugin turn int8 weights into float weights once, at compile time; return how many.

    ``compress_weights`` leaves each layer's weights as ``Constant(u8) → Convert → Subtract → Multiply``,
    which the plugin recognises and keeps int8 in memory, dequantizing inside its kernels on every call. A
    ``Maximum(weights, lowest float)`` after that chain changes no value (weights are finite), but the
    pattern no longer matches, so the plugin's constant folding computes the float weights when the model
    compiles. The file keeps its int8 bytes and serves with plain OpenVINO. Memory holds float weights, and
    calls run the float kernels. Whether it was folded on a given host is recorded in the candidate's
    ``execution.weighted_ops`` (bf16/f32 there, where the per-call variant shows i8/u8).
    """
    import numpy as np
    import openvino.opset13 as ops

    lowest = ops.constant(np.array([np.finfo(np.float32).min], dtype=np.float32))
    n = 0
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() not in _WEIGHTED_OPS or op.get_input_size() < 2:
            continue
        src = op.input(1).get_source_output()
        # Only a dequantization chain (compress_weights' output); a float Constant needs nothing.
        if src.get_node().get_type_name() in ("Multiply", "Convert", "Reshape", "Subtract"):
            op.input(1).replace_source_output(ops.maximum(src, lowest).output(0))
            n += 1
    ov_model.validate_nodes_and_infer_types()
    return n


def compile_config(threads: int) -> dict[str, Any]:
    """OpenVINO's CPU settings for one request at a time pinned to ``threads``: the latency setting every
    OpenVINO artifact is measured with (models and causal LMs alike).

    Example:
        >>> compile_config(1)["NUM_STREAMS"]
        1
    """
    return {"INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}


def layer_of(node_name: str) -> str | None:
    """The torch module name a ``convert_model`` node belongs to, or None for nodes outside a weighted layer.

    Example:
        >>> layer_of("__module.bert.encoder.layer.0.output.dense/aten::linear/MatMul")
        'bert.encoder.layer.0.output.dense'
        >>> layer_of("aten::softmax/Softmax") is None
        True
    """
    m = _MODULE_RE.match(node_name)
    return m.group(1) if m else None


def _weighted_nodes(ov_model: Any) -> dict[str, list[str]]:
    """layer name → friendly names of its weighted ops, in graph order."""
    out: dict[str, list[str]] = {}
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() not in _WEIGHTED_OPS:
            continue
        layer = layer_of(op.get_friendly_name())
        if layer is not None:
            out.setdefault(layer, []).append(op.get_friendly_name())
    return out


def _name_weighted_ops(model: torch.nn.Module, example: tuple[torch.Tensor, ...], ov_model: Any) -> None:
    """Give every weighted op the torch module name of its layer (``__module.NAME/aten::linear/MatMul``).

    ``convert_model`` names most ops after their module, but its fusions rename some: a Conv2d followed by
    BatchNorm becomes one Convolution named ``Multiply_2878``. Those are matched to the torch layers that ran,
    in execution order, by weight shape — so ``layers`` and ``keep_float`` always speak torch module names.
    """
    ran: list[tuple[str, tuple[int, ...]]] = []
    types = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    hooks = [mod.register_forward_hook(lambda mod_, i, o, n=n: ran.append((n, tuple(mod_.weight.shape))))
             for n, mod in model.named_modules() if isinstance(mod, types)]
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    named = {layer_of(op.get_friendly_name()) for op in ov_model.get_ordered_ops()} - {None}
    todo = [(n, s) for n, s in ran if n not in named]
    for op in ov_model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in _WEIGHTED_OPS or layer_of(op.get_friendly_name()) is not None:
            continue
        if op.input_value(1).get_node().get_type_name() != "Constant":
            continue  # activation × activation: not a layer with weights
        shape = tuple(op.input_value(1).get_node().get_output_shape(0))
        hit = next((t for t in todo if t[1] == shape or t[1][::-1] == shape), None)
        if hit is None:
            continue  # a weighted op with no torch layer behind it (e.g. a constant folded in): left unnamed
        todo.remove(hit)
        aten = "_convolution" if kind != "MatMul" else "linear"
        op.set_friendly_name(f"__module.{hit[0]}/aten::{aten}/{kind}")


def _is_transformer(ov_model: Any) -> bool:
    # Attention (Softmax, or the fused SDPA op) next to LayerNorm (MVN): the case NNCF's TRANSFORMER type is for.
    types = {op.get_type_name() for op in ov_model.get_ops()}
    return bool(types & {"Softmax", "ScaledDotProductAttention"}) and "MVN" in types


def _convert(ov: Any, model: torch.nn.Module, example: tuple[torch.Tensor, ...],
             inputs: list[tuple[str, Any, Any]]) -> tuple[Any, str]:
    """``convert_model`` by the route that keeps the batch dimension dynamic: (model, route name).

    An eager module is traced (TorchScript) by ``convert_model`` itself, as OpenVINO documents. An FX graph
    (an HF folder or a ``.pt2`` program, re-modularized after ``torch.export``) is not: its shape reads
    (``sym_size``) trace to the example's constants, so the converted model answered a batch of 32 rows with
    2 (issue 22: the hf: MiniLM's OpenVINO candidate). It is exported again with ``torch.export`` and a
    dynamic batch ``Dim``, and the ``ExportedProgram`` is converted, which keeps the symbol.
    """
    if isinstance(model, torch.fx.GraphModule):
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(model, example, dynamic_shapes=tuple({0: batch} for _ in example))
        return ov.convert_model(program, input=inputs), "torch.export"
    return ov.convert_model(model, example_input=example, input=inputs), "trace"


def _check_batch_follows_input(ov: Any, ov_model: Any, example: tuple[torch.Tensor, ...]) -> None:
    """Refuse a converted model whose output rows do not follow the input rows (batch 1 and 3).

    A batch size baked in by the converter does not always fail: broadcasting can hand back the example's
    row count for any batch, and every metric computed on it would be wrong. Checked once, on the float model.
    """
    core = ov.Core()
    compiled = core.compile_model(ov_model, "CPU", compile_config(1))
    for b in (1, 3):
        rows = [t[:1].repeat(b, *([1] * (t.dim() - 1))).numpy() for t in example]
        try:
            got = compiled(rows)
            outs = [got[o] for o in compiled.outputs]  # every output of a program with several
        except Exception as e:  # noqa: BLE001 - the plugin's shape errors are long; what matters is that it failed
            raise RecipeError(f"the OpenVINO model does not run at batch {b} (the batch dimension was not kept "
                              f"dynamic by openvino.convert_model): {' '.join(str(e).split())[:300]}") from e
        for out in outs:
            if out.shape[0] != b:
                raise RecipeError(f"the OpenVINO model answers a batch of {b} rows with {out.shape[0]}: "
                                  "openvino.convert_model baked a batch size into the graph")


class OpenVinoRuntime:
    """OpenVINO CPU plugin; int8 by NNCF post-training quantization or weight compression."""

    name = "openvino"
    suffix = ".ovz"

    def is_available(self) -> str | None:
        """None when both openvino (to run) and nncf (to quantize) import, else which is missing."""
        for mod in ("openvino", "nncf"):
            try:
                __import__(mod)
            except ImportError as e:
                return f"{mod} is not installed ({e}); install it with: pip install 'modelpress[openvino]'"
            except Exception as e:  # noqa: BLE001 - a broken install is as unusable as a missing one
                return f"{mod} cannot be imported ({type(e).__name__}: {e})"
        return None

    def versions(self) -> dict[str, str]:
        """Package versions the artifact depends on (OpenVINO reads the IR; NNCF made the int8 graph)."""
        out = {}
        for dist in ("openvino", "nncf"):
            try:
                out[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
        return out

    # ----------------------------------------------------------------------------- export
    def export(self, model: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], input_names: Sequence[str],
               workdir: Path) -> Exported:
        """``openvino.convert_model`` of an eval-mode copy (``model`` itself is left untouched)."""
        ov = _ov()
        names = list(input_names) or [f"input_{i}" for i in range(len(example_inputs))]
        if len(names) != len(example_inputs):
            raise RecipeError(f"{len(example_inputs)} example inputs but {len(names)} input names ({names})")
        m = copy.deepcopy(model).eval()  # tracing runs forward; never let it touch the caller's module or mode
        inputs = [(n, ov.PartialShape([-1, *t.shape[1:]]), _ov_type(ov, t.dtype)) for n, t in zip(names, example_inputs)]
        try:
            with torch.inference_mode(False), torch.no_grad():
                ov_model, route = _convert(ov, m, tuple(example_inputs), inputs)
        except Exception as e:  # noqa: BLE001 - the converter's own errors are long traces; say what failed
            raise RecipeError(f"openvino.convert_model could not convert the model "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:400]})") from e
        _name_weighted_ops(m, tuple(example_inputs), ov_model)
        for port, n in zip(ov_model.inputs, names):
            port.get_tensor().set_names({n})
        _check_batch_follows_input(ov, ov_model, tuple(example_inputs))
        return Exported(runtime=self.name, handle=ov_model, input_names=names,
                        meta={"exporter": f"openvino.convert_model ({route})",
                              "transformer": _is_transformer(ov_model)})

    # ----------------------------------------------------------------------------- quantize
    def quantize(self, exported: Exported, qcfg: Any, calib: Sequence[tuple[torch.Tensor, ...]],
                 keep_float: Sequence[str], workdir: Path, tuning: Mapping[str, Any] | None = None) -> Exported:
        """NNCF ``quantize`` (static) or ``compress_weights`` (dynamic / weight-only) of a float export.

        ``keep_float`` are names from ``layers``; their weighted ops go into NNCF's ``IgnoredScope``.
        """
        nncf = _nncf()
        step = getattr(qcfg, "type", None)
        nodes = _weighted_nodes(exported.handle)
        unknown = [k for k in keep_float if k not in nodes]
        if unknown:
            raise RecipeError(f"keep_float names not in this model: {unknown[:5]}; known layers: "
                              f"{', '.join(list(nodes)[:8])}{' ...' if len(nodes) > 8 else ''}")
        ignored_names = [n for k in keep_float for n in nodes[k]]
        ignored = nncf.IgnoredScope(names=ignored_names) if ignored_names else None
        # NNCF transforms a copy? Not documented for every algorithm: work on a clone so ``exported`` stays float.
        model = exported.handle.clone()
        meta: dict[str, Any] = {"step": step, "float_layers": list(keep_float), "versions": self.versions()}
        if step in _STATIC:
            if not calib:
                raise RecipeError("quantize_static in OpenVINO needs calibration batches; the job has none")
            # One row per item, as NNCF's examples feed it: its statistics reduce over items, and batched
            # items make some algorithms (bias correction) warn and lose accuracy. subset_size = every row.
            items = [{n: t[i:i + 1].numpy() for n, t in zip(exported.input_names, b)}
                     for b in calib for i in range(int(b[0].shape[0]))]
            n_samples = len(items)
            kwargs: dict[str, Any] = {"subset_size": n_samples}
            if exported.meta.get("transformer"):
                kwargs["model_type"] = nncf.ModelType.TRANSFORMER
            if ignored is not None:
                kwargs["ignored_scope"] = ignored
            alpha = (tuning or {}).get("smooth_quant_alpha")
            if alpha is not None:
                aqp = nncf.quantization.advanced_parameters
                kwargs["advanced_parameters"] = aqp.AdvancedQuantizationParameters(
                    smooth_quant_alphas=aqp.AdvancedSmoothQuantParameters(matmul=float(alpha)))
            q = nncf.quantize(model, nncf.Dataset(items), **kwargs)
            meta.update(method="nncf.quantize", model_type="TRANSFORMER" if "model_type" in kwargs else None,
                        calibration_samples=n_samples, tuning=dict(tuning or {}))
            if ignored_names and getattr(qcfg, "float_layer_weights", "int8") == "int8":
                # Layers kept out of int8 *activations* still store int8 weights (weight-only, dequantized
                # on the fly): measured on MiniLM, six FFN output projections kept this way raised the cosine
                # from 0.9927 to 0.9961 at the same bytes (22.93 MB), where truly float layers cost 1.8 MB
                # each and broke the size goal. compress_weights only touches weights still float.
                q = nncf.compress_weights(q, mode=nncf.CompressWeightsMode.INT8_ASYM)
                meta["float_layers_weights"] = "int8 weight-only (nncf.compress_weights INT8_ASYM)"
        elif step in _WEIGHT_ONLY:
            kwargs = {"mode": nncf.CompressWeightsMode.INT8_ASYM}
            if ignored is not None:
                kwargs["ignored_scope"] = ignored
            q = nncf.compress_weights(model, **kwargs)
            meta.update(method="nncf.compress_weights", mode="INT8_ASYM", activations="float")
            where = getattr(qcfg, "weight_decompression", None) or "per_call"
            if where == "at_load":
                meta["weights_folded_at_load"] = _fold_weights_at_load(q)
            meta["weight_decompression"] = where
        else:
            raise RecipeError(f"the openvino runtime cannot do step {step!r}; it does "
                              f"{', '.join(sorted(_STATIC | _WEIGHT_ONLY))}")
        meta["quantized_layers"] = [k for k in nodes if k not in set(keep_float)]
        return Exported(runtime=self.name, handle=q, input_names=exported.input_names, quantized=True,
                        meta={**exported.meta, **meta})

    def tunings(self, exported: Exported, qcfg: Any) -> list[dict[str, Any]]:
        """SmoothQuant strengths for a transformer's static int8 (NNCF's default for MatMul is 0.95).

        SmoothQuant moves activation outliers into the weights by a per-channel scale, ``alpha`` setting how
        much; the scales fold into the weights, so the int8 graph and its kernels stay the same. NNCF's docs
        name ``smooth_quant_alphas`` as the knob to tune per model: measured on all-MiniLM-L6-v2 (this
        project's benchmark), 0.75 gave cosine 0.9955 on held-out sentences where the default gave 0.9931,
        at the same bytes and speed. Which one a job keeps is decided on its selection rows.
        """
        if getattr(qcfg, "type", None) in _STATIC and exported.meta.get("transformer"):
            return [{"smooth_quant_alpha": a} for a in SMOOTH_QUANT_ALPHAS]
        return []

    def variants(self, qcfg: Any) -> list[dict[str, Any]]:
        """Weight-only int8 left open (``weight_decompression`` None): dequantized per call, or at load.

        NNCF's int8 weights are per output channel in both ``quantize`` and ``compress_weights``, so there is
        no granularity to choose. What differs by CPU is where weight-only int8 pays for its dequantization.
        On an AMX host (OpenVINO 2026.4, MiniLM b32, 1 thread) the compressed-weight kernels ran 322 ms,
        and the same file folded to bf16 weights at load ran 267–273 ms, as fast as float (276–281) and
        faster than NNCF's full int8 ``quantize`` (293). Cosine to float was the same for both. On an AVX-512
        host without AMX, bf16 is 1.6× slower than int8, and the answer may differ. The job measures both.

        Example:
            >>> from modelpress.optimize.recipes import DynamicQuantConfig, StaticQuantConfig
            >>> rt = OpenVinoRuntime()
            >>> rt.variants(DynamicQuantConfig())
            [{'weight_decompression': 'per_call'}, {'weight_decompression': 'at_load'}]
            >>> rt.variants(DynamicQuantConfig(weight_decompression="at_load")), rt.variants(StaticQuantConfig())
            ([], [])
        """
        if getattr(qcfg, "type", None) in _WEIGHT_ONLY and getattr(qcfg, "weight_decompression", "") is None:
            return [{"weight_decompression": "per_call"}, {"weight_decompression": "at_load"}]
        return []

    def layers(self, exported: Exported) -> list[str]:
        """Torch module names of the layers with weights (Linear/Conv), in graph order."""
        return list(_weighted_nodes(exported.handle))

    # ----------------------------------------------------------------------------- save / load
    def save(self, exported: Exported, path: Path) -> int:
        """IR (``.xml`` + ``.bin``) and metadata in one uncompressed zip, written atomically; its bytes."""
        import tempfile

        from modelpress.optimize.artifacts import atomic_write_bytes

        ov = _ov()
        path = Path(path)
        meta = {"format": FORMAT, "runtime": self.name, "runtime_versions": self.versions(),
                "input_names": exported.input_names, "quantized": exported.quantized,
                "detail": _jsonable(exported.meta)}
        with tempfile.TemporaryDirectory(dir=path.parent if path.parent.exists() else None) as tmp:
            xml = Path(tmp) / XML
            # compress_to_fp16=False: the float baseline must stay fp32 (the default would halve float weights).
            ov.save_model(exported.handle, str(xml), compress_to_fp16=False)

            def write(f: Any) -> None:
                with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as z:
                    z.writestr(META, json.dumps(meta, sort_keys=True))
                    z.write(xml, XML)
                    z.write(xml.with_suffix(".bin"), BIN)

            atomic_write_bytes(path, write)
        return path.stat().st_size

    def load(self, path: Path, threads: int) -> Callable[..., torch.Tensor]:
        """A callable ``fn(*tensors) -> tensor`` over the compiled IR, ``threads`` inference threads."""
        ov = _ov()
        import numpy as np

        meta, xml, weights = read_ovz(path)
        core = ov.Core()
        model = core.read_model(xml.decode(), ov.Tensor(np.frombuffer(weights, dtype=np.uint8)))
        compiled = core.compile_model(model, "CPU", compile_config(threads))
        return OpenVinoCallable(compiled, meta.get("input_names") or [p.any_name for p in compiled.inputs])


def read_ovz(path: Path) -> tuple[dict[str, Any], bytes, bytes]:
    """(metadata, IR xml, IR weights) of an ``.ovz``; ``ModelLoadError`` when it is not one."""
    try:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read(META))
            xml, weights = z.read(XML), z.read(BIN)
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as e:
        raise ModelLoadError(f"{path} is not a modelpress OpenVINO artifact ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelLoadError(f"{path}: unknown artifact format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    return meta, xml, weights


class OpenVinoCallable:
    """The compiled model as a function of torch tensors (one infer request, reused: no per-call setup)."""

    def __init__(self, compiled: Any, input_names: Sequence[str]) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.input_names = list(input_names)
        self.n_outputs = len(compiled.outputs)
        self.training = False  # the harness refuses models in training mode; this one never is

    def execution(self) -> dict[str, Any]:
        """How the CPU plugin runs this model on this host: what an artifact cannot pin, so it is recorded.

        ``inference_precision`` is the plugin's own choice for the float parts (``bf16`` on a CPU with
        AVX512_BF16 or AMX, ``f32`` elsewhere: OpenVINO ignores a precision written into the IR), and
        ``weighted_ops`` counts the weight-carrying nodes by node type, precision and kernel, e.g.
        ``{"FullyConnected i8 brgemm_avx512_amx_I8": 36}``. Kernel names are known only after a call ran
        (dynamic shapes pick them then), so call this after timing.

        Example (``fn = OpenVinoRuntime().load(path, 1)``, after ``fn(x)``)::

            fn.execution()["inference_precision"]   # 'bf16' on this project's AVX-512 hosts
        """
        out: dict[str, Any] = {"device": "CPU"}
        for key, prop in (("inference_precision", "INFERENCE_PRECISION_HINT"), ("threads", "INFERENCE_NUM_THREADS"),
                          ("dynamic_quantization_group_size", "DYNAMIC_QUANTIZATION_GROUP_SIZE")):
            try:
                value = self.compiled.get_property(prop)
            except RuntimeError:  # a property this OpenVINO does not have: record what it has
                continue
            out[key] = value.get_type_name() if hasattr(value, "get_type_name") else int(value)
        ops: dict[str, int] = {}
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            kind = info["layerType"].astype(str) if "layerType" in info else ""
            if kind in _RUNTIME_WEIGHTED:
                label = f"{kind} {info['runtimePrecision'].astype(str)} {info['primitiveType'].astype(str)}"
                ops[label] = ops.get(label, 0) + 1
        out["weighted_ops"] = dict(sorted(ops.items()))
        return out

    def __call__(self, *args: torch.Tensor) -> Any:
        if len(args) != len(self.input_names):
            raise TypeError(f"the model takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                            f"got {len(args)}")
        feed = {i: a.detach().contiguous().numpy() for i, a in enumerate(args)}
        # share_inputs: no copy of the caller's arrays in the timed path; outputs are copied (the request reuses them).
        self.request.infer(feed, share_inputs=True)
        outs = [torch.from_numpy(self.request.get_output_tensor(i).data.copy()) for i in range(self.n_outputs)]
        return outs[0] if len(outs) == 1 else tuple(outs)  # a program with several outputs gets them all

    def __repr__(self) -> str:
        return f"OpenVinoCallable(inputs={self.input_names})"


def _ov_type(ov: Any, dtype: torch.dtype) -> Any:
    table = {torch.float32: ov.Type.f32, torch.int64: ov.Type.i64, torch.int32: ov.Type.i32,
             torch.float16: ov.Type.f16, torch.bool: ov.Type.boolean, torch.uint8: ov.Type.u8}
    if dtype not in table:
        raise RecipeError(f"input dtype {dtype} is not supported by the openvino export")
    return table[dtype]


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


__all__ = ["OpenVinoRuntime", "OpenVinoCallable", "compile_config", "layer_of", "read_ovz"]

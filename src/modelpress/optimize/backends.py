"""The quantization backend, behind one small interface.

``torch.ao.quantization`` is deprecated in torch 2.13 in favour of torchao (``quantize_``, pt2e), but on
this CPU it is the only int8 path faster than float without ``torch.compile`` (field notes). So the
step handlers talk to a ``QuantBackend``; ``TorchAOQuantization`` implements it with torch.ao today, and
a torchao implementation can be registered beside it and chosen per recipe (``backend:`` in a
quantization step) without touching handlers.

Three ways in: ``quantize_dynamic`` (eager, weights int8 ahead of time, activations per batch),
``prepare_static`` → calibrate → ``convert`` (FX graph mode, conv-bn-relu fused), and ``prepare_qat`` →
train → ``convert`` (FX, fake quantization during training).

Example:
    >>> get_backend("torch.ao").name
    'torch.ao'
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
from typing import Any, Iterator, Protocol, Sequence

import torch
from torch import nn

from modelpress.errors import RecipeError, UserInputError, is_task_control

log = logging.getLogger(__name__)

ENGINES = ("fbgemm", "qnnpack", "x86")


class QuantizationInputError(UserInputError, ValueError):
    """A quantization request that cannot work for this model/engine; the message says what to change."""


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
_EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)
_QUANTIZED_PACKAGES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")


def is_quantized_module(module: nn.Module) -> bool:
    """True for torch.ao quantized modules, including modelpress's subclasses of them.

    Example:
        >>> is_quantized_module(torch.nn.Linear(2, 2))
        False
    """
    return any(c.__module__.startswith(_QUANTIZED_PACKAGES) for c in type(module).__mro__)


def quantized_module_names(model: nn.Module) -> list[str]:
    """Qualified names of the quantized modules of ``model`` (their packed-param children excluded).

    Example:
        >>> quantized_module_names(torch.nn.Sequential(torch.nn.Linear(2, 2)))
        []
    """
    out = []
    for name, m in model.named_modules():
        if is_quantized_module(m) and not type(m).__name__.endswith("PackedParams"):
            out.append(name)
    return sorted(out)


def _is_kept_float(name: str, keep_float: Sequence[str]) -> bool:
    # A kept name covers the module and everything inside it ("encoder.layer.0" keeps the whole block).
    return any(name == k or name.startswith(k + ".") for k in keep_float)


def check_module_names(model: nn.Module, names: Sequence[str], *, what: str = "keep_float") -> None:
    """Raise an actionable error when ``names`` are not modules of ``model``.

    Example:
        >>> check_module_names(torch.nn.Sequential(torch.nn.Linear(2, 2)), ["0"])
    """
    known = {n for n, _ in model.named_modules()}
    unknown = [k for k in names if k not in known]
    if unknown:
        sample = ", ".join(n for n in sorted(known) if n)[:300]
        raise QuantizationInputError(
            f"{what} names modules that do not exist: {', '.join(unknown)}; module names look like: {sample}")


# --------------------------------------------------------------------------- measured engine facts
@functools.lru_cache(maxsize=None)
def _full_range_probe(engine: str, _env: str | None) -> tuple[bool, float]:
    # Worst case for an int16 intermediate: every weight at ±127 and every activation at 255. fbgemm without
    # VNNI sums u8×s8 pairs in saturating int16 (vpmaddubsw) and is off by ~45 % here; with VNNI (or on
    # qnnpack) it is exact to rounding. Measured rather than read from /proc/cpuinfo because
    # FBGEMM_ENABLE_INSTRUCTIONS can restrict fbgemm below what the CPU offers.
    from torch.ao.nn.quantized.dynamic import Linear as DynLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(256, 32)
    with torch.no_grad():
        lin.weight.copy_(torch.randint(0, 2, (32, 256), generator=g).float() * 2 - 1)
        lin.bias.zero_()
    lin.qconfig = per_channel_dynamic_qconfig
    with quantized_engine(engine):
        q = DynLinear.from_float(lin)
        x = torch.rand(8, 256, generator=g) + 5.0
        y = torch.ops.quantized.linear_dynamic(x, q._packed_params._packed_params, reduce_range=False)
    ref = lin(x).detach()
    rel = float((y - ref).abs().max() / ref.abs().max())
    return rel < 0.02, rel


def full_range_activations_exact(engine: str) -> bool:
    """Whether ``engine``'s dynamic int8 Linear runs 8-bit activations without int16 saturation (measured).

    fbgemm/x86 clip activations to 7 bits by default (``reduce_range``) because AVX2 kernels without
    VNNI would overflow with 8; qnnpack always uses 8 bits.

    Example:
        >>> full_range_activations_exact("qnnpack")
        True
    """
    return _full_range_probe(engine, os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS"))[0]


def effective_activation_bits(engine: str, reduce_range: bool | None) -> int:
    """Bits the dynamic Linear kernel quantizes activations to: qnnpack ignores ``reduce_range``.

    Example:
        >>> effective_activation_bits("fbgemm", None), effective_activation_bits("qnnpack", True)
        (7, 8)
    """
    if engine == "qnnpack":
        return 8
    return 7 if reduce_range in (None, True) else 8


@functools.lru_cache(maxsize=None)
def per_channel_supported(engine: str) -> bool:
    """Whether ``engine`` packs per-channel int8 conv/linear weights (measured by packing a tiny one).

    Example:
        >>> per_channel_supported("fbgemm")
        True
    """
    from torch.ao.quantization.observer import default_per_channel_weight_observer

    w = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    obs = default_per_channel_weight_observer(ch_axis=0)
    obs(w)
    scale, zp = obs.calculate_qparams()

    def q(t: torch.Tensor) -> torch.Tensor:
        return torch.quantize_per_channel(t, scale.float(), zp.long(), 0, torch.qint8)

    try:
        with quantized_engine(engine):
            torch.ops.quantized.conv2d_prepack(q(w), None, [1, 1], [0, 0], [1, 1], 1)
            torch.ops.quantized.linear_prepack(q(w.reshape(4, 18)), None)
    except RuntimeError:
        return False
    return True


# --------------------------------------------------------------------------- module subclasses
class FullRangeDynamicLinear(torch.ao.nn.quantized.dynamic.Linear):
    """Dynamic int8 Linear with 8-bit activations on every engine (torch hard-codes 7 bits on fbgemm/x86).

    Same weights and state dict as its parent; only the kernel's ``reduce_range`` flag differs. Only used
    where ``full_range_activations_exact`` measured the kernel exact.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed_params.dtype != torch.qint8:
            return super().forward(x)
        y = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)
        return y.to(x.dtype)


class _PortableRNNMixin:
    """Dynamic int8 LSTM/GRU whose state dict holds plain tensors.

    torch.ao keeps an RNN's packed weights in TorchScript objects, which ``torch.load(weights_only=True)``
    refuses, so a stock quantized LSTM artifact could be written but never safely read back. These
    subclasses save the int8 weights and float biases as tensors and re-pack them when loaded.
    """

    _all_weight_values: Any

    def _hide_packed(self) -> None:
        mods = self._modules  # type: ignore[attr-defined]
        if "_all_weight_values" in mods:
            packed = list(mods.pop("_all_weight_values"))
            # A plain list: not a child module, so its ScriptObjects never reach the state dict.
            object.__setattr__(self, "_all_weight_values", packed)

    def _tensor_names(self) -> list[str]:
        names = []
        for layer in range(self.num_layers):  # type: ignore[attr-defined]
            for suffix in ("", "_reverse") if self.bidirectional else ("",):  # type: ignore[attr-defined]
                for kind in ("weight", "bias"):
                    names += [f"{kind}_ih_l{layer}{suffix}", f"{kind}_hh_l{layer}{suffix}"]
        return names

    def set_weight_bias(self, weight_bias_dict: dict[str, torch.Tensor]) -> None:
        super().set_weight_bias(weight_bias_dict)  # type: ignore[misc]
        self._hide_packed()

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        wb = self._weight_bias()  # type: ignore[attr-defined]
        for name, t in {**wb["weight"], **wb["bias"]}.items():
            destination[prefix + name] = t

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        names = self._tensor_names()
        missing = [prefix + n for n in names if prefix + n not in state_dict]
        if missing:
            missing_keys.extend(missing)
            return
        self.version = local_metadata.get("version", None)
        self.set_weight_bias({n: state_dict[prefix + n] for n in names})


class PortableDynamicLSTM(_PortableRNNMixin, torch.ao.nn.quantized.dynamic.LSTM):
    """``torch.ao.nn.quantized.dynamic.LSTM`` with a weights-only-loadable state dict."""


class PortableDynamicGRU(_PortableRNNMixin, torch.ao.nn.quantized.dynamic.GRU):
    """``torch.ao.nn.quantized.dynamic.GRU`` with a weights-only-loadable state dict."""


def make_portable(model: nn.Module, *, full_range_linear: bool) -> None:
    """Swap dynamic int8 LSTM/GRU (and, if asked, Linear) modules in place for their portable subclasses."""
    import torch.ao.nn.quantized.dynamic as nnqd

    for m in model.modules():
        if type(m) is nnqd.LSTM:
            m.__class__ = PortableDynamicLSTM
            m._hide_packed()  # type: ignore[attr-defined]
        elif type(m) is nnqd.GRU:
            m.__class__ = PortableDynamicGRU
            m._hide_packed()  # type: ignore[attr-defined]
        elif type(m) is nnqd.Linear and full_range_linear:
            m.__class__ = FullRangeDynamicLinear


# --------------------------------------------------------------------------- the interface
class QuantBackend(Protocol):
    """What the quantization step handlers need from a quantization library."""

    name: str

    def quantize_dynamic(self, model: nn.Module, *, engine: str, per_channel: bool,
                         module_types: Sequence[str], keep_float: Sequence[str],
                         quantize_embeddings: bool = False, reduce_range: bool | None = None) -> nn.Module:
        """Return a new model with weights int8 and activations quantized per batch at run time."""
        ...

    def prepare_static(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], *, engine: str,
                       per_channel: bool, keep_float: Sequence[str]) -> nn.Module:
        """Return an observed copy of ``model`` (eval mode): run calibration batches through it, then ``convert``."""
        ...

    def prepare_qat(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], *, engine: str,
                    per_channel: bool, keep_float: Sequence[str]) -> nn.Module:
        """Return a trainable copy of ``model`` with fake quantization (train mode); train it, then ``convert``."""
        ...

    def convert(self, prepared: nn.Module, *, engine: str) -> nn.Module:
        """Turn a calibrated/trained prepared model into an int8 model (eval mode)."""
        ...

    def describe(self, *, engine: str, per_channel: bool, qat: bool) -> dict[str, Any]:
        """JSON-able description of the qconfig used (observers, weight scheme), for step meta."""
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


def _weight_is_per_channel(qconfig: Any) -> bool:
    obs = qconfig.weight()
    return getattr(obs, "qscheme", None) in (torch.per_channel_symmetric, torch.per_channel_affine)


class TorchAOQuantization:
    """``torch.ao.quantization``: eager dynamic, FX graph mode static PTQ and QAT."""

    name = "torch.ao"

    # ------------------------------------------------------------------ dynamic
    def quantize_dynamic(self, model: nn.Module, *, engine: str, per_channel: bool,
                         module_types: Sequence[str], keep_float: Sequence[str],
                         quantize_embeddings: bool = False, reduce_range: bool | None = None) -> nn.Module:
        from torch.ao.quantization import (
            default_dynamic_qconfig,
            float_qparams_weight_only_qconfig,
            per_channel_dynamic_qconfig,
            quantize_dynamic,
        )

        _note_deprecation_once()
        check_module_names(model, keep_float)
        unknown_types = [t for t in module_types if t not in _MODULE_TYPES]
        if unknown_types:
            raise QuantizationInputError(f"module_types: unknown {unknown_types}; known: {', '.join(_MODULE_TYPES)}")
        full_range = reduce_range is False and engine != "qnnpack"
        if full_range and not full_range_activations_exact(engine):
            raise QuantizationInputError(
                f"reduce_range: false needs int8 kernels that do not saturate with 8-bit activations; on this CPU "
                f"the {engine} kernel does (measured error {_full_range_probe(engine, os.environ.get('FBGEMM_ENABLE_INSTRUCTIONS'))[1]:.0%}; "
                "fbgemm/x86 need AVX512-VNNI or AVX-VNNI). Use reduce_range: true (7-bit activations) or the "
                "qnnpack engine.")
        spec: dict[str, object] = {}
        for name, mod in model.named_modules():
            if _is_kept_float(name, keep_float):
                continue
            for t in module_types:
                if type(mod) is _MODULE_TYPES[t]:
                    # Per-channel dynamic qconfig exists for Linear only; RNNs use per-tensor.
                    spec[name] = per_channel_dynamic_qconfig if (per_channel and t == "Linear") else default_dynamic_qconfig
            if quantize_embeddings and type(mod) in _EMBEDDING_TYPES:
                # Weight-only, one scale/offset per row: the int8 "qint8" dynamic path does not apply to lookups.
                spec[name] = float_qparams_weight_only_qconfig
        with quantized_engine(engine):
            q = quantize_dynamic(copy.deepcopy(model), spec, dtype=torch.qint8)
            make_portable(q, full_range_linear=full_range)
        return q

    # ------------------------------------------------------------------ FX static / QAT
    def _qconfig_mapping(self, *, engine: str, per_channel: bool, qat: bool, keep_float: Sequence[str]) -> Any:
        from torch.ao.quantization import QConfig, get_default_qat_qconfig_mapping, get_default_qconfig_mapping
        from torch.ao.quantization.fake_quantize import (
            default_fused_per_channel_wt_fake_quant,
            default_fused_wt_fake_quant,
        )
        from torch.ao.quantization.observer import default_per_channel_weight_observer, default_weight_observer

        # Start from the engine's own defaults (observers, 7-bit activations on fbgemm/x86, fixed-qparams
        # ops) and change only the weight scheme when the recipe asks for the other one.
        mapping = get_default_qat_qconfig_mapping(engine) if qat else get_default_qconfig_mapping(engine)
        if per_channel and not per_channel_supported(engine):
            raise QuantizationInputError(f"per_channel: true is not supported by the {engine} engine here; "
                                         "set per_channel: false")
        weight = ((default_fused_per_channel_wt_fake_quant if per_channel else default_fused_wt_fake_quant) if qat
                  else (default_per_channel_weight_observer if per_channel else default_weight_observer))

        def fix(qc: Any) -> Any:
            if qc is None or qc.weight is None or _weight_is_per_channel(qc) == per_channel:
                return qc
            return QConfig(activation=qc.activation, weight=weight)

        mapping.set_global(fix(mapping.global_qconfig))
        for obj, qc in list(mapping.object_type_qconfigs.items()):
            mapping.set_object_type(obj, fix(qc))
        for name in keep_float:
            mapping.set_module_name(name, None)
        return mapping

    def describe(self, *, engine: str, per_channel: bool, qat: bool) -> dict[str, Any]:
        mapping = self._qconfig_mapping(engine=engine, per_channel=per_channel, qat=qat, keep_float=())
        qc = mapping.global_qconfig
        act, wt = qc.activation(), qc.weight()
        return {
            "qconfig_mapping": f"get_default_{'qat_' if qat else ''}qconfig_mapping({engine!r})",
            "activation": type(act).__name__, "activation_dtype": str(act.dtype).replace("torch.", ""),
            "activation_reduce_range": bool(getattr(act, "reduce_range", False)),
            "weight": type(wt).__name__, "weight_qscheme": str(wt.qscheme).replace("torch.", ""),
        }

    def prepare_static(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], *, engine: str,
                       per_channel: bool, keep_float: Sequence[str]) -> nn.Module:
        from torch.ao.quantization.quantize_fx import prepare_fx

        _note_deprecation_once()
        check_module_names(model, keep_float)
        mapping = self._qconfig_mapping(engine=engine, per_channel=per_channel, qat=False, keep_float=keep_float)
        traced = _traceable(copy.deepcopy(model).eval())
        _leave_integer_ops_float(traced, example_inputs, mapping)
        with quantized_engine(engine):
            # prepare_fx fuses conv-bn(-relu) and linear-relu (eval mode folds BN into the conv).
            return prepare_fx(traced, mapping, example_inputs)

    def prepare_qat(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], *, engine: str,
                    per_channel: bool, keep_float: Sequence[str]) -> nn.Module:
        from torch.ao.quantization.quantize_fx import prepare_qat_fx

        _note_deprecation_once()
        check_module_names(model, keep_float)
        mapping = self._qconfig_mapping(engine=engine, per_channel=per_channel, qat=True, keep_float=keep_float)
        traced = _traceable(copy.deepcopy(model).train())
        _leave_integer_ops_float(traced, example_inputs, mapping)
        with quantized_engine(engine):
            # Train mode: conv-bn becomes a QAT ConvBn module that keeps updating BN while fake-quantizing.
            return prepare_qat_fx(traced, mapping, example_inputs)

    def convert(self, prepared: nn.Module, *, engine: str) -> nn.Module:
        from torch.ao.quantization.quantize_fx import convert_fx

        with quantized_engine(engine):
            return convert_fx(prepared.eval()).eval()


def _leave_integer_ops_float(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], mapping: Any) -> int:
    """Give no qconfig to the graph's functions whose outputs are integers or booleans; return how many.

    An exported transformer computes position ids and masks in its own graph (RoBERTa's ``cumsum(mask) * mask``,
    Swin's window indices, sizes read off tensors): FX would put an activation observer on those ``add``/``mul``
    nodes like on any other, and a histogram of int64 values fails (``"histogram_cpu" not implemented for
    'Int'``), as does one of a Python int (``'int' object has no attribute 'numel'``). The dtypes
    are found by running the example inputs through the graph once (``ShapeProp``). Only a ``GraphModule``'s
    own functions are numbered as ``prepare_fx`` numbers them (per function, in graph order, at the root);
    any other model is left as it is.
    """
    if not isinstance(model, torch.fx.GraphModule):
        return 0
    from collections import defaultdict

    from torch.fx.passes.shape_prop import ShapeProp

    try:
        with torch.no_grad():
            ShapeProp(model).propagate(*example_inputs)
    except Exception as e:  # noqa: BLE001 - no dtypes known: prepare_fx runs as before and says what fails
        if is_task_control(e):
            raise
        return 0
    seen: dict[Any, int] = defaultdict(int)
    skipped = 0
    for node in model.graph.nodes:
        if node.op != "call_function":
            continue
        index = seen[node.target]
        seen[node.target] += 1
        dtype = getattr(node.meta.get("tensor_meta"), "dtype", None)
        # A Python number (a size read off a tensor, ``sym_size_int``) is not observed either.
        if (isinstance(dtype, torch.dtype) and not dtype.is_floating_point) or node.meta.get("type") in (int, bool,
                                                                                                          float):
            mapping.set_module_name_object_type_order("", node.target, index, None)
            skipped += 1
    return skipped


def _traceable(model: nn.Module) -> nn.Module:
    # Keep the check cheap and the message useful: FX needs a symbolically traceable forward.
    try:
        torch.fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure means "use dynamic quantization instead"
        if is_task_control(e):  # the soft time limit / abandon signal is not an untraceable model
            raise
        raise QuantizationInputError(
            f"static/QAT quantization needs an FX-traceable model, and {type(model).__name__} is not "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); use quantize_dynamic for this model") from None
    return model


_BACKENDS: dict[str, QuantBackend] = {"torch.ao": TorchAOQuantization()}


def register_backend(backend: QuantBackend) -> None:
    """Make another quantization library selectable by name (e.g. a torchao ``quantize_`` path).

    Example:
        >>> register_backend(TorchAOQuantization())  # re-registering the default is harmless
    """
    _BACKENDS[backend.name] = backend


def get_backend(name: str = "torch.ao") -> QuantBackend:
    """The registered backend called ``name``; an unknown name is a ``RecipeError`` listing the known ones.

    Example:
        >>> type(get_backend()).__name__
        'TorchAOQuantization'
    """
    try:
        return _BACKENDS[name]
    except KeyError:
        raise RecipeError(f"backend: unknown quantization backend {name!r}; known: {', '.join(_BACKENDS)}") from None

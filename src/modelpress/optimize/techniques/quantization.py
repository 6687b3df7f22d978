"""Handlers for quantization steps (registered with ``registry.register_handler``).

Three steps, all routed through a ``QuantBackend`` (``optimize.backends``):

* ``quantize_dynamic``: int8 weights for Linear/LSTM/GRU (and, optionally, 8-bit embedding tables);
  activations quantized per batch at run time.
* ``quantize_static``: FX graph mode PTQ: conv-bn-relu fused, observers calibrated on the spec's
  calibration inputs, converted to int8 kernels end to end.
* ``qat``: FX quantization-aware training: a short fine-tune with fake quantization, then int8.

Each handler's ``apply`` records in its meta what ``rebuild`` needs to re-create the same module structure
from a freshly built model (``artifacts.load_artifact`` then loads the weights): the backend, the layers
kept float (``float_modules``, which the accuracy-budget fallback sets) and, for FX, the example input
shapes. FX models are rebuilt by running prepare → convert *without* calibration: the observed scales and
zero points come back with the state dict.

Each handler also offers ``sensitivity`` (per-layer, measured) for the fallback in ``pipeline``.

Example:
    >>> from modelpress.optimize.recipes import StaticQuantConfig
    >>> from modelpress.optimize.techniques.registry import handler_for
    >>> type(handler_for(StaticQuantConfig())).__name__
    'StaticQuantHandler'
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
from torch import nn

from modelpress.optimize.backends import (
    QuantizationInputError,
    TorchAOQuantization,
    effective_activation_bits,
    get_backend,
    is_quantized_module,
    make_portable,
    quantized_engine,
    quantized_module_names,
)
from modelpress.optimize.measure import as_tuple, batch_of, n_samples, predict
from modelpress.errors import UserInputError
from modelpress.optimize.recipes import (DynamicQuantConfig, QATConfig, StaticQuantConfig, WeightOnlyConfig,
                                        per_channel_weights)
from modelpress.optimize.techniques.registry import StepContext, StepOutput, register_handler
from modelpress.optimize.techniques.sensitivity import SensitivityReport, requantize_sensitivity, swap_sensitivity
from modelpress.optimize.spec import Inputs

_DTYPES = {str(d): d for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
                               torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)}


def _describe_inputs(example: tuple[torch.Tensor, ...]) -> list[dict[str, Any]]:
    return [{"shape": list(t.shape), "dtype": str(t.dtype)} for t in example]


def _inputs_from_meta(meta: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    # Only shapes and dtypes matter to FX prepare; zeros keep rebuild independent of any data.
    try:
        return tuple(torch.zeros(d["shape"], dtype=_DTYPES[d["dtype"]]) for d in meta["example_inputs"])
    except (KeyError, TypeError) as e:
        raise QuantizationInputError(f"artifact step meta lacks usable example_inputs ({e}); re-run the job") from None


def _fused_modules(prepared: nn.Module) -> dict[str, str]:
    from torch.ao.nn.intrinsic import _FusedModule

    out = {}
    for name, m in prepared.named_modules():
        if isinstance(m, _FusedModule) or type(m).__module__.startswith("torch.ao.nn.intrinsic.qat"):
            out[name] = type(m).__name__
    return out


def _count(model: nn.Module, types: tuple[type[nn.Module], ...]) -> int:
    return sum(1 for m in model.modules() if isinstance(m, types))


def _require_quantized(model: nn.Module, step: str, what: str) -> list[str]:
    names = quantized_module_names(model)
    if not names:
        # A quantization step that changes nothing is a user error, not a success with 1.0x size.
        raise QuantizationInputError(f"{step} found no {what} to quantize (or every one is in keep_float)")
    return names


# --------------------------------------------------------------------------------------- dynamic
@register_handler(DynamicQuantConfig)
class DynamicQuantHandler:
    """Dynamic int8 (eager). Supersedes the first dynamic int8 handler (same meta, more options)."""

    def _quantize(self, model: nn.Module, cfg: DynamicQuantConfig, engine: str, backend: str,
                  keep_float: Sequence[str]) -> nn.Module:
        return get_backend(backend).quantize_dynamic(
            model, engine=engine, per_channel=per_channel_weights(cfg), module_types=cfg.module_types,
            keep_float=tuple(keep_float), quantize_embeddings=cfg.quantize_embeddings, reduce_range=cfg.reduce_range)

    def apply(self, model: nn.Module, cfg: DynamicQuantConfig, ctx: StepContext) -> StepOutput:
        q = self._quantize(model, cfg, ctx.engine, cfg.backend, cfg.keep_float)
        what = "/".join(cfg.module_types) + ("/Embedding" if cfg.quantize_embeddings else "") + " module"
        quantized = _require_quantized(q, "quantize_dynamic", what)
        embeddings = [n for n in quantized if type(q.get_submodule(n)).__name__ in ("Embedding", "EmbeddingBag")]
        return StepOutput(q, {
            "backend": cfg.backend, "quantized_modules": quantized, "float_modules": list(cfg.keep_float),
            "quantized_embeddings": embeddings, "per_channel": per_channel_weights(cfg),
            "activation_bits": effective_activation_bits(ctx.engine, cfg.reduce_range),
        })

    def rebuild(self, model: nn.Module, cfg: DynamicQuantConfig, meta: dict[str, Any], *, engine: str) -> nn.Module:
        return self._quantize(model, cfg, engine, meta.get("backend", cfg.backend),
                              meta.get("float_modules", cfg.keep_float))

    def sensitivity(self, model_in: nn.Module, out: StepOutput, cfg: DynamicQuantConfig, ctx: StepContext, *,
                    inputs: Inputs, reference: torch.Tensor, method: str, batch_size: int) -> SensitivityReport:
        # Eager dynamic quantization keeps module names, so float and int8 modules can be swapped in place.
        return swap_sensitivity(model_in, out.model, out.meta["quantized_modules"], inputs, reference=reference,
                                method=method, batch_size=batch_size)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- FX special modules
# torch.ao's default (QAT) qconfig mappings give every module the engine's int8 activation/weight qconfig.
# Two module kinds cannot take it:
# * nn.Embedding/EmbeddingBag: a lookup has no int8-activation kernel; torch.ao quantizes it weight-only with
#   one float scale/offset per row (``float_qparams``). QAT's Embedding asserts exactly that qscheme (the
#   AssertionError seen on seq_lstm/seq_gru), and static PTQ silently left it float.
# * nn.LSTM/nn.GRU: torch.ao has no static or QAT int8 LSTM/GRU kernels (the x86/fbgemm backend configs list
#   them with dynamic int8 only), so with the default mapping FX leaves them float and the artifact of a
#   recurrent model barely shrinks. They get dynamic int8 (weights int8, activations quantized per call,
#   float in and out) inside the same FX graph; during QAT they train in float (no fake quant: there is no
#   int8 recurrent kernel to simulate) and are quantized at convert.
# The names of the modules in each group go into the step meta; "fx_module_qconfigs" records the scheme so
# that rebuild re-creates the same structure (artifacts without it were made with the plain mapping).
FX_MODULE_QCONFIGS = {"Embedding": "float_qparams_weight_only", "EmbeddingBag": "float_qparams_weight_only",
                      "LSTM": "dynamic_int8", "GRU": "dynamic_int8"}
_FX_TYPES: dict[str, type[nn.Module]] = {"Embedding": nn.Embedding, "EmbeddingBag": nn.EmbeddingBag,
                                         "LSTM": nn.LSTM, "GRU": nn.GRU}


class _FXSpecialModules(TorchAOQuantization):
    """torch.ao FX static/QAT with embeddings weight-only and LSTM/GRU dynamic int8 (see above)."""

    def __init__(self, schemes: dict[str, str]) -> None:
        self.schemes = dict(schemes)

    def _qconfig_mapping(self, *, engine: str, per_channel: bool, qat: bool, keep_float: Sequence[str]) -> Any:
        from torch.ao.quantization import (
            default_dynamic_qconfig,
            default_embedding_qat_qconfig,
            float_qparams_weight_only_qconfig,
        )

        mapping = super()._qconfig_mapping(engine=engine, per_channel=per_channel, qat=qat, keep_float=keep_float)
        qconfigs = {"float_qparams_weight_only": default_embedding_qat_qconfig if qat else float_qparams_weight_only_qconfig,
                    "dynamic_int8": default_dynamic_qconfig}
        for type_name, scheme in self.schemes.items():
            mapping.set_object_type(_FX_TYPES[type_name], qconfigs[scheme])
        # keep_float was set by module name, which outranks object type: kept modules stay float.
        return mapping

    def convert(self, prepared: nn.Module, *, engine: str) -> nn.Module:
        q = super().convert(prepared, engine=engine)
        # torch.ao's dynamic LSTM/GRU keep TorchScript objects in their state dict, which a weights-only load
        # refuses; the backend's portable subclasses store tensors (same as quantize_dynamic).
        with quantized_engine(engine):
            make_portable(q, full_range_linear=False)
        return q


def _fx_backend(name: str, schemes: dict[str, str] | None) -> Any:
    backend = get_backend(name)
    if schemes and type(backend) is TorchAOQuantization:
        return _FXSpecialModules(schemes)
    return backend


def _fx_schemes(model: nn.Module, cfg: StaticQuantConfig | QATConfig) -> dict[str, str]:
    # Recorded only when the model has such modules: nothing changes (nor in meta) for conv/linear models.
    present = {type(m).__name__ for m in model.modules() if type(m) in _FX_TYPES.values()}
    return {k: v for k, v in FX_MODULE_QCONFIGS.items() if k in present and get_backend(cfg.backend).name == "torch.ao"}


def _prepare(backend: Any, model: nn.Module, example: tuple[torch.Tensor, ...], *, qat: bool, engine: str,
             per_channel: bool, keep_float: Sequence[str]) -> nn.Module:
    prep = backend.prepare_qat if qat else backend.prepare_static
    try:
        return prep(model, example, engine=engine, per_channel=per_channel, keep_float=tuple(keep_float))
    except AssertionError as e:
        # torch.ao asserts on qconfigs a module cannot take; say which step and what to do instead.
        raise QuantizationInputError(
            f"{'qat' if qat else 'quantize_static'} cannot quantize {type(model).__name__} with torch.ao FX "
            f"({str(e).splitlines()[0][:200] if str(e) else 'AssertionError'}); put the module in keep_float or "
            "use quantize_dynamic") from None


def _special_meta(q: nn.Module, model_in: nn.Module, schemes: dict[str, str], quantized: list[str]) -> dict[str, Any]:
    import torch.ao.nn.quantized.dynamic as nnqd

    if not schemes:
        return {}
    qset = set(quantized)
    dynamic = sorted(n for n, m in q.named_modules() if isinstance(m, (nnqd.LSTM, nnqd.GRU)))
    weight_only = sorted(n for n in qset if type(q.get_submodule(n)).__name__ in ("Embedding", "EmbeddingBag"))
    # Modules with weights in the float model that are not quantized in the result (kept, or no kernel).
    owners = [n for n, m in model_in.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    still_float = sorted(n for n in owners if n not in qset and not any(n.startswith(k + ".") for k in qset))
    return {"fx_module_qconfigs": schemes, "dynamic_modules": dynamic, "weight_only_modules": weight_only,
            "unquantized_modules": still_float,
            "recurrent_note": ("LSTM/GRU have no static/QAT int8 kernels in torch.ao: they are dynamic int8 "
                               "(int8 weights, activations quantized per call, float between layers)"
                               + ("; trained in float during QAT" if dynamic else ""))
            if any(v == "dynamic_int8" for v in schemes.values()) else None}


# --------------------------------------------------------------------------------------- static (FX)
def _calibration_plan(calib: Inputs, cfg: StaticQuantConfig) -> list[tuple[int, int]]:
    n = n_samples(calib)
    if n == 0:
        raise QuantizationInputError("quantize_static needs calibration inputs, and the model's spec has none")
    bs = cfg.calibration_batch_size
    return [(i * bs, min((i + 1) * bs, n)) for i in range(cfg.calibration_batches) if i * bs < n]


@register_handler(StaticQuantConfig)
class StaticQuantHandler:
    """Static int8 post-training quantization in FX graph mode."""

    def _quantize(self, model: nn.Module, cfg: StaticQuantConfig, ctx: StepContext,
                  keep_float: Sequence[str]) -> StepOutput:
        schemes = _fx_schemes(model, cfg)
        backend = _fx_backend(cfg.backend, schemes)
        calib = ctx.data.calib_inputs
        plan = _calibration_plan(calib, cfg)
        example = batch_of(calib, 0, 1)
        prepared = _prepare(backend, model, example, qat=False, engine=ctx.engine, per_channel=per_channel_weights(cfg),
                            keep_float=keep_float)
        fused = _fused_modules(prepared)
        # no_grad, not inference_mode: observers update their buffers in place, and buffers made outside
        # inference mode may not be updated inside it.
        with torch.no_grad():
            for start, stop in plan:
                prepared(*batch_of(calib, start, stop))
        q = backend.convert(prepared, engine=ctx.engine)
        quantized = _require_quantized(q, "quantize_static", "conv/linear layer")
        meta = {
            "backend": cfg.backend, "quantized_modules": quantized, "float_modules": list(keep_float),
            "fused_modules": fused,
            "batchnorm_folded": _count(model, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))
            - _count(q, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)),
            "calibration_batches": len(plan), "calibration_batches_requested": cfg.calibration_batches,
            "calibration_samples": plan[-1][1], "example_inputs": _describe_inputs(example),
            **backend.describe(engine=ctx.engine, per_channel=per_channel_weights(cfg), qat=False),
            **_special_meta(q, model, schemes, quantized),
        }
        return StepOutput(q, meta)

    def apply(self, model: nn.Module, cfg: StaticQuantConfig, ctx: StepContext) -> StepOutput:
        return self._quantize(model, cfg, ctx, cfg.keep_float)

    def rebuild(self, model: nn.Module, cfg: StaticQuantConfig, meta: dict[str, Any], *, engine: str) -> nn.Module:
        return _rebuild_fx(model, cfg, meta, engine=engine, qat=False)

    def sensitivity(self, model_in: nn.Module, out: StepOutput, cfg: StaticQuantConfig, ctx: StepContext, *,
                    inputs: Inputs, reference: torch.Tensor, method: str, batch_size: int) -> SensitivityReport:
        # An int8 graph passes quantized tensors between layers: a float module cannot be swapped in, so
        # each trial re-runs prepare → calibrate → convert with a different keep_float.
        def quantize(keep: tuple[str, ...]) -> nn.Module:
            return self._quantize(model_in, cfg, ctx, keep).model

        return requantize_sensitivity(quantize, out.meta["quantized_modules"], inputs, reference=reference,
                                      method=method, quantized_model=out.model,  # type: ignore[arg-type]
                                      base_keep_float=cfg.keep_float, batch_size=batch_size)


# --------------------------------------------------------------------------------------- QAT (FX)
@register_handler(QATConfig)
class QATHandler:
    """Quantization-aware training in FX graph mode: fake-quant fine-tune on the spec's training data."""

    def _train(self, model: nn.Module, cfg: QATConfig, ctx: StepContext, keep_float: Sequence[str]) -> StepOutput:
        data = ctx.data
        if data.train_inputs is None:
            raise QuantizationInputError(f"qat needs training inputs, and model {ctx.spec.name!r} has none; "
                                         "use quantize_static instead")
        x = data.train_inputs
        n = n_samples(x)
        if data.train_labels is not None:
            target, kind = data.train_labels, "labels"
            loss_fn = nn.functional.cross_entropy
        else:
            # No labels (fidelity tasks): train the int8-simulated model to reproduce the float outputs.
            target, kind = predict(model, x), "reference"
            loss_fn = nn.functional.mse_loss
        schemes = _fx_schemes(model, cfg)
        backend = _fx_backend(cfg.backend, schemes)
        example = batch_of(x, 0, 1)
        prepared = _prepare(backend, model, example, qat=True, engine=ctx.engine, per_channel=per_channel_weights(cfg),
                            keep_float=keep_float)
        fused = _fused_modules(prepared)
        g = torch.Generator().manual_seed(ctx.seed)
        torch.manual_seed(ctx.seed)
        opt = torch.optim.Adam(prepared.parameters(), lr=cfg.lr)
        losses, steps = [], 0
        prepared.train()
        for epoch in range(cfg.epochs):
            if cfg.freeze_bn_after is not None and epoch >= cfg.freeze_bn_after:
                prepared.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)
            perm = torch.randperm(n, generator=g)
            total, seen = 0.0, 0
            for i in range(0, n, cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                opt.zero_grad()
                loss = loss_fn(prepared(*(t[idx] for t in as_tuple(x))), target[idx])
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
                steps += 1
            losses.append(total / seen)
        q = backend.convert(prepared, engine=ctx.engine)
        quantized = _require_quantized(q, "qat", "conv/linear layer")
        meta = {
            "backend": cfg.backend, "quantized_modules": quantized, "float_modules": list(keep_float),
            "fused_modules": fused, "target": kind, "epochs": cfg.epochs, "optimizer_steps": steps,
            "bn_frozen_from_epoch": cfg.freeze_bn_after if cfg.freeze_bn_after is not None and cfg.freeze_bn_after < cfg.epochs else None,
            "train_samples": n, "epoch_losses": losses, "example_inputs": _describe_inputs(example),
            **backend.describe(engine=ctx.engine, per_channel=per_channel_weights(cfg), qat=True),
            **_special_meta(q, model, schemes, quantized),
        }
        return StepOutput(q, meta)

    def apply(self, model: nn.Module, cfg: QATConfig, ctx: StepContext) -> StepOutput:
        return self._train(model, cfg, ctx, cfg.keep_float)

    def rebuild(self, model: nn.Module, cfg: QATConfig, meta: dict[str, Any], *, engine: str) -> nn.Module:
        return _rebuild_fx(model, cfg, meta, engine=engine, qat=True)

    def sensitivity(self, model_in: nn.Module, out: StepOutput, cfg: QATConfig, ctx: StepContext, *,
                    inputs: Inputs, reference: torch.Tensor, method: str, batch_size: int) -> SensitivityReport:
        # Honest but costly: every trial is a full (short) QAT run with one layer's qconfig changed.
        def quantize(keep: tuple[str, ...]) -> nn.Module:
            return self._train(model_in, cfg, ctx, keep).model

        return requantize_sensitivity(quantize, out.meta["quantized_modules"], inputs, reference=reference,
                                      method=method, quantized_model=out.model,  # type: ignore[arg-type]
                                      base_keep_float=cfg.keep_float, batch_size=batch_size)


def _rebuild_fx(model: nn.Module, cfg: StaticQuantConfig | QATConfig, meta: dict[str, Any], *, engine: str,
                qat: bool) -> nn.Module:
    """The converted FX structure of a static or QAT step, without data (its state dict is loaded next)."""
    backend = _fx_backend(meta.get("backend", cfg.backend), meta.get("fx_module_qconfigs"))
    prepared = _prepare(backend, model, _inputs_from_meta(meta), qat=qat, engine=engine,
                        per_channel=per_channel_weights(cfg), keep_float=meta.get("float_modules", cfg.keep_float))
    with warnings.catch_warnings():
        # Uncalibrated observers warn and give placeholder scales; the state dict loaded next replaces them.
        warnings.filterwarnings("ignore", message=".*must run observer before calling calculate_qparams.*")
        return backend.convert(prepared, engine=engine)


def is_quantized(model: nn.Module) -> bool:
    """True when any module of ``model`` is a torch.ao quantized module.

    Example:
        >>> is_quantized(torch.nn.Linear(2, 2))
        False
    """
    return any(is_quantized_module(m) for m in model.modules())


@register_handler(WeightOnlyConfig)
class WeightOnlyHandler:
    """``quantize_weight_only`` is a causal LM's step: the LM job (``optimize.lm.job``) runs it in each runtime.

    It never reaches a torch step chain for a causal LM; any other model gets the reason and what to use
    instead, rather than weight-only layers whose decode speed nobody would measure.
    """

    def apply(self, model: nn.Module, cfg: WeightOnlyConfig, ctx: StepContext) -> StepOutput:
        raise UserInputError("step 'quantize_weight_only' is for causal language models (an hf: folder whose "
                             "architecture is *ForCausalLM or *LMHeadModel); for this model use quantize_dynamic "
                             "or quantize_static")

    def rebuild(self, model: nn.Module, cfg: WeightOnlyConfig, meta: dict[str, Any], *, engine: str) -> nn.Module:
        raise UserInputError("no artifact of this model was built with 'quantize_weight_only'")


"""Weight-only quantization of a causal LM in torch: int8 / int4 weights, float activations.

Only the weights shrink; activations stay floating point (bf16 inside the quantized matmuls by default,
see below). A weight is quantized group-wise and
**asymmetrically** along its input dimension: each group of ``group_size`` inputs of one output row has a
``scale`` and a ``zero`` (the float value code ``mid`` decodes to), ``w ≈ (q - mid) * scale + zero`` with
``mid = 2**bits / 2``. That is the float-domain zero point torch's CPU int4 kernel expects, so one format
serves the kernel, ``dequantize()`` and the file.

Three kinds of module replace the float ones (``quantize_lm``):

- ``WeightOnlyLinear`` for every ``nn.Linear`` (and GPT-2's ``transformers.pytorch_utils.Conv1D``, whose
  weight is stored transposed) outside the LM head. int4 runs ``aten._weight_int4pack_mm_for_cpu``; int8
  per-channel runs ``aten._weight_int8pack_mm`` (symmetric by design, the zero point is added back as a
  rank-1 term); anything else (int8 in groups, a shape the kernel refuses) dequantizes then matmuls.
- ``QuantizedEmbedding``: the token table as int8 per row, dequantized only for the rows gathered.
- The LM head, chosen explicitly (``lm_head=``): it maps to the whole vocabulary, so its error moves the
  top-1 token most; int8 per-channel by default, never int4 unless asked (``"same"``).

The kernels are fast only with bfloat16 activations (on this torch 2.13 CPU build they run a scalar loop
for float32, 10-70x slower than float ``F.linear``), so ``compute_dtype`` is bfloat16 by default: the input
is cast to bf16 for the quantized matmul and the output back to the model's dtype. The bf16 int8 kernel
crashes the process (SIGSEGV) when the layer's inputs are not a multiple of 16, so such a layer is never
given to it (``WeightOnlyLinear.kernel_applies``). Scales and zeros are stored in bf16 and the codes
chosen against those rounded values, so the kernel and ``dequantize()`` decode the very same weights.

Off by default, ``quantize_lm(calibration=ids)`` picks per-group clipping ratios on calibration activations
(``search_clip``), trading a few clamped extremes for a finer grid where it lowers the layer's output error.

The file (``save_quantized``) is one safetensors file of plain tensors: codes (int8, or uint8 holding two
4-bit codes, low nibble first), bf16 scales and zeros, and the float rest of the model; the kernel's own
int4 layout is torch's internal one, blocked for the host's vector unit, so it is never stored, only built at load
(``WeightOnlyLinear.prepare``). Its metadata holds what was quantized and the model's config;
``load_quantized`` rebuilds the architecture with ``AutoModelForCausalLM.from_config`` (built-in model
types only, never ``trust_remote_code``) and refuses a file whose metadata is missing or does not fit.

Example:
    >>> qm, meta = quantize_lm(model, bits=4, group_size=32)                # doctest: +SKIP
    >>> save_quantized(qm, meta, "model-int4.safetensors")                  # doctest: +SKIP
    >>> same = load_quantized("model-int4.safetensors")                     # doctest: +SKIP
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelpress.errors import ModelLoadError, is_task_control

FORMAT = "modelpress.weight_only"
VERSION = 1
METADATA_KEY = "modelpress.weight_only"
# The only group sizes aten._weight_int4pack_mm_for_cpu accepts.
INT4_KERNEL_GROUPS = (32, 64, 128, 256)
EMBEDDING_CHOICES = ("int8", "float")
LM_HEAD_CHOICES = ("int8", "same", "float")
BACKENDS = ("auto", "kernel", "dequant")
_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
# A group whose values are all equal has no range; its scale still must be > 0 (codes divide by it).
_TINY_SCALE = 1e-30


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ----------------------------------------------------------------------------------------------------------
# One quantized weight
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizedWeight:
    """A ``[out, in]`` weight as codes plus per-group bf16 ``scale`` and ``zero``.

    ``data``: bits=8, int8 ``[out, in]`` holding ``q - 128``; bits=4, uint8 ``[out, in/2]`` holding two codes
    per byte (column ``2j`` in the low nibble, ``2j+1`` in the high one). ``scale`` and ``zero`` are
    ``[out, in/group_size]``; ``w ≈ (q - mid) * scale + zero`` per group, ``mid`` = 128 or 8.

    Example:
        >>> qw = quantize_weight(torch.randn(16, 64), bits=4, group_size=32)
        >>> qw.shape, qw.data.dtype, tuple(qw.scale.shape)
        ((16, 64), torch.uint8, (16, 2))
    """

    data: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group_size: int

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.data.shape
        return rows, cols * 2 if self.bits == 4 else cols

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.data, self.scale, self.zero))

    def codes(self) -> torch.Tensor:
        """The unsigned codes ``q`` (0..2**bits-1) as int32 ``[out, in]``, the int4 kernel's input.

        Example:
            >>> int(quantize_weight(torch.randn(2, 32), bits=4, group_size=32).codes().max()) <= 15
            True
        """
        return _codes(self.data, self.bits)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float ``[out, in]`` weight these codes stand for.

        Example:
            >>> w = torch.randn(8, 64)
            >>> bool((quantize_weight(w, bits=8, group_size=64).dequantize() - w).abs().max() < 0.05)
            True
        """
        return _dequantize(self.data, self.scale, self.zero, self.bits, self.group_size, dtype)


def _codes(data: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 8:
        return data.to(torch.int32) + 128
    low = (data & 0x0F).to(torch.int32)
    high = (data >> 4).to(torch.int32)
    return torch.stack([low, high], dim=-1).reshape(data.shape[0], data.shape[1] * 2)


def _dequantize(data: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group_size: int,
                dtype: torch.dtype) -> torch.Tensor:
    # Decoded in float32 whatever `dtype` is: (q - mid) * scale + zero in bf16 would round twice.
    mid = 1 << (bits - 1)
    if bits == 8:
        centred = data.to(torch.float32)            # int8 stores q - 128 already
    else:
        centred = _codes(data, bits).to(torch.float32) - mid
    rows, cols = centred.shape
    groups = centred.view(rows, cols // group_size, group_size)
    w = groups * scale.to(torch.float32).unsqueeze(-1) + zero.to(torch.float32).unsqueeze(-1)
    return w.view(rows, cols).to(dtype)


def _bf16_at_least(x: torch.Tensor) -> torch.Tensor:
    """``x`` (positive) rounded *up* to bf16: a scale rounded down would leave the group's extremes outside
    the code range, clamped with an error of up to half a step more."""
    b = x.to(torch.bfloat16)
    return torch.where(b.to(torch.float32) < x, torch.nextafter(b, torch.full_like(b, float("inf"))), b)


def quantize_weight(w: torch.Tensor, *, bits: int, group_size: int | None, symmetric: bool = False,
                    clip: float | torch.Tensor | None = None) -> QuantizedWeight:
    """Quantize a ``[out, in]`` float weight group-wise and asymmetrically along ``in``.

    ``group_size=None`` is one group per output row (per-channel). Per group: ``zero`` is the bf16 value
    code ``mid`` decodes to, placed at the group's min/max midpoint; ``scale`` is the smallest bf16 step
    for which the codes ``0 .. 2**bits-1`` around that zero still reach the group's min and max, so no value
    is clamped and the error of every element is at most ``scale / 2``.

    ``clip``: a ratio (or one per group, ``[out, in/group_size]``) that shrinks each group's range about its
    centre before the grid is placed; the values outside are clamped (``search_clip`` picks it from data).

    ``symmetric=True``: ``zero`` = 0 and codes ``mid ± (mid-1)`` (``scale = max|w| / (mid-1)``): up to twice
    the step of a skewed group, but int8 per-channel then runs the int8 kernel with no zero-point term
    (a few µs less per layer and token at decode).

    Example:
        >>> w = torch.randn(32, 128)
        >>> e8 = (quantize_weight(w, bits=8, group_size=32).dequantize() - w).abs().max()
        >>> e4 = (quantize_weight(w, bits=4, group_size=32).dequantize() - w).abs().max()
        >>> bool(e8 < e4 / 8)
        True
    """
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"expected a 2-D float weight [out, in], got {tuple(w.shape)} {w.dtype}")
    out_f, in_f = w.shape
    g = in_f if group_size is None else int(group_size)
    if g <= 0 or in_f % g:
        raise ValueError(f"group_size {g} does not divide the weight's {in_f} inputs")
    if bits == 4 and in_f % 2:
        raise ValueError(f"int4 packs two codes per byte: the weight's {in_f} inputs must be even")
    wf = w.detach().to(torch.float32)
    if not bool(torch.isfinite(wf).all()):
        raise ValueError("the weight contains NaN or Inf")
    levels, mid = 1 << bits, 1 << (bits - 1)
    groups = wf.reshape(out_f, in_f // g, g)
    lo, hi = groups.amin(-1), groups.amax(-1)
    if clip is not None:
        # A finer grid for the bulk of a group at the price of clamping its few extreme values.
        ratio = torch.as_tensor(clip, dtype=torch.float32).clamp(0.05, 1.0)
        if symmetric:
            lo, hi = lo * ratio, hi * ratio
        else:
            centre = (lo + hi) / 2
            lo, hi = centre - (centre - lo) * ratio, centre + (hi - centre) * ratio
    if symmetric:
        zero = torch.zeros_like(lo, dtype=torch.bfloat16)
        z = zero.to(torch.float32)
        need = (torch.maximum(hi.abs(), lo.abs()) / (mid - 1)).clamp_min(_TINY_SCALE)
    else:
        # The zero is rounded to bf16 *before* the scale and codes are chosen, so the codes compensate for
        # its rounding instead of the kernel seeing a shifted grid.
        zero = (lo + (hi - lo) * (mid / (levels - 1))).to(torch.bfloat16)
        z = zero.to(torch.float32)
        need = torch.maximum((hi - z) / (mid - 1), (z - lo) / mid).clamp_min(_TINY_SCALE)
    scale = _bf16_at_least(need)
    s = scale.to(torch.float32)
    q = torch.round((groups - z.unsqueeze(-1)) / s.unsqueeze(-1)) + mid
    q = q.clamp_(0, levels - 1).to(torch.int32).reshape(out_f, in_f)
    if bits == 8:
        data = (q - 128).to(torch.int8)
    else:
        data = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)
    return QuantizedWeight(data.contiguous(), scale.contiguous(), zero.contiguous(), bits, g)


CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


def search_clip(w: torch.Tensor, x: torch.Tensor, *, bits: int, group_size: int | None, symmetric: bool = False,
                ratios: tuple[float, ...] = CLIP_RATIOS) -> torch.Tensor:
    """Per (output row, group) clipping ratio minimising that group's share of the layer's output error on
    calibration activations ``x`` ``[samples, in]``: ``sum_s (x_s,g · (w_n,g - ŵ_n,g))²``.

    The groups are scored independently (their cross terms ignored, as AWQ's clip search does), so each
    keeps the ratio best for it; ratio 1.0 (plain min/max) is always a candidate, so the score never worsens.

    Example:
        >>> w, x = torch.randn(16, 64), torch.randn(128, 64)
        >>> r = search_clip(w, x, bits=4, group_size=32)
        >>> tuple(r.shape), bool(((r > 0) & (r <= 1)).all())
        ((16, 2), True)
    """
    out_f, in_f = w.shape
    g = in_f if group_size is None else group_size
    groups = in_f // g
    xg = x.detach().to(torch.float32).reshape(-1, groups, g)
    wf = w.detach().to(torch.float32)
    best_err = torch.full((out_f, groups), float("inf"))
    best = torch.ones(out_f, groups)
    # Rows in blocks: the [samples, rows, groups] products stay near 64 MiB whatever the layer's size.
    block = max(1, (1 << 24) // max(1, xg.shape[0] * groups))
    for r in ratios:
        d = (wf - quantize_weight(wf, bits=bits, group_size=g, symmetric=symmetric, clip=r).dequantize())
        d = d.reshape(out_f, groups, g)
        err = torch.cat([torch.einsum("sgk,ngk->sng", xg, d[i:i + block]).pow(2).sum(0)
                         for i in range(0, out_f, block)])
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, r), best)
    return best


def _collect_inputs(model: nn.Module, calibration: torch.Tensor, names: set[str], max_samples: int,
                    ) -> dict[str, torch.Tensor]:
    """The float inputs each named linear sees on the calibration rows, up to ``max_samples`` token rows
    each (a fixed random subset, so the search costs the same for long calibration sets)."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = []
    for name, m in model.named_modules():
        if name in names:
            hooks.append(m.register_forward_pre_hook(
                lambda mod, args, name=name: seen[name].append(args[0].detach().reshape(-1, args[0].shape[-1]))))
    try:
        with torch.inference_mode():
            ids = calibration.to(torch.long)
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    gen = torch.Generator().manual_seed(0)
    out = {}
    for n, parts in seen.items():
        x = torch.cat(parts).to(torch.float32).clone()
        if x.shape[0] > max_samples:
            x = x[torch.randperm(x.shape[0], generator=gen)[:max_samples]]
        out[n] = x
    return out


# ----------------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------------


class WeightOnlyLinear(nn.Module):
    """A linear layer with quantized weights: ``y = x @ W.T + b`` with ``W`` decoded from codes.

    Persistent buffers (what is saved): ``qweight`` (see ``QuantizedWeight.data``), ``scale``, ``zero``
    (bf16 ``[out, in/group_size]``) and ``bias`` (float, if any). ``backend``: ``"kernel"`` uses torch's
    CPU kernel (``kernel_applies``: int4 in groups of 32/64/128/256; int8 per channel),
    ``"dequant"`` decodes the weight on every call then runs ``F.linear``, ``"auto"`` takes the kernel when
    it applies and ``compute_dtype`` is bfloat16 (the only dtype it is fast for; see the module docstring).

    Example:
        >>> lin = nn.Linear(64, 32)
        >>> q = WeightOnlyLinear.from_linear(lin, bits=8, group_size=None)
        >>> x = torch.randn(3, 64)
        >>> bool((q(x) - lin(x)).abs().max() < 0.1), q.uses_kernel
        (True, True)
    """

    def __init__(self, in_features: int, out_features: int, *, bits: int, group_size: int | None,
                 bias: bool = True, compute_dtype: torch.dtype = torch.bfloat16, backend: str = "auto",
                 out_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        g = in_features if group_size is None else int(group_size)
        if bits not in (4, 8) or g <= 0 or in_features % g or (bits == 4 and in_features % 2):
            raise ValueError(f"no int{bits} layout for {in_features} inputs in groups of {g}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, g
        self.compute_dtype, self.backend = compute_dtype, backend
        cols = in_features // 2 if bits == 4 else in_features
        self.register_buffer("qweight", torch.zeros(out_features, cols, dtype=torch.uint8 if bits == 4 else torch.int8))
        self.register_buffer("scale", torch.ones(out_features, in_features // g, dtype=torch.bfloat16))
        self.register_buffer("zero", torch.zeros(out_features, in_features // g, dtype=torch.bfloat16))
        self.register_buffer("bias", torch.zeros(out_features, dtype=out_dtype) if bias else None)
        # Derived from the buffers, never saved: the int4 kernel's packed layout is host-specific.
        self._kernel: dict[str, Any] | None = None
        if backend == "kernel" and not self.kernel_applies:
            raise ValueError(f"torch's CPU kernel does not take int{bits} {out_features}x{in_features} "
                             f"in groups of {g}; use backend='auto' or 'dequant'")

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None, *, bits: int, group_size: int | None,
                    compute_dtype: torch.dtype = torch.bfloat16, backend: str = "auto",
                    symmetric: bool = False, clip: float | torch.Tensor | None = None) -> WeightOnlyLinear:
        """Quantize a ``[out, in]`` weight (and keep ``bias`` in float).

        Example:
            >>> WeightOnlyLinear.from_weight(torch.randn(16, 64), None, bits=4, group_size=32).qweight.shape
            torch.Size([16, 32])
        """
        out_f, in_f = weight.shape
        mod = cls(in_f, out_f, bits=bits, group_size=group_size, bias=bias is not None, compute_dtype=compute_dtype,
                  backend=backend, out_dtype=weight.dtype)
        mod.set_weight(quantize_weight(weight, bits=bits, group_size=group_size, symmetric=symmetric, clip=clip))
        if bias is not None:
            mod.bias = bias.detach().clone()
        return mod

    @classmethod
    def from_linear(cls, linear: nn.Module, *, bits: int, group_size: int | None,
                    compute_dtype: torch.dtype = torch.bfloat16, backend: str = "auto",
                    symmetric: bool = False, clip: float | torch.Tensor | None = None) -> WeightOnlyLinear:
        """Replace an ``nn.Linear`` or a transformers ``Conv1D`` (weight ``[in, out]``, transposed here).

        Example:
            >>> WeightOnlyLinear.from_linear(nn.Linear(32, 16), bits=8, group_size=None).out_features
            16
        """
        weight = linear.weight.detach()
        if _is_conv1d(linear):
            weight = weight.t()
        elif not isinstance(linear, nn.Linear):
            raise TypeError(f"expected nn.Linear or transformers Conv1D, got {type(linear).__name__}")
        return cls.from_weight(weight, linear.bias, bits=bits, group_size=group_size, compute_dtype=compute_dtype,
                               backend=backend, symmetric=symmetric, clip=clip)

    def set_weight(self, qw: QuantizedWeight) -> None:
        """Install quantized codes of this layer's shape, bits and group size (the kernel copy is rebuilt).

        Example:
            >>> m = WeightOnlyLinear(64, 16, bits=4, group_size=32, bias=False)
            >>> m.set_weight(quantize_weight(torch.randn(16, 64), bits=4, group_size=32))
        """
        if (qw.bits, qw.group_size, qw.shape) != (self.bits, self.group_size, (self.out_features, self.in_features)):
            raise ValueError("quantized weight does not fit this layer")
        self.qweight, self.scale, self.zero = qw.data, qw.scale, qw.zero
        self._kernel = None

    def quantized_weight(self) -> QuantizedWeight:
        """The layer's codes as a ``QuantizedWeight`` (``.dequantize()`` gives the float weight it computes with).

        Example:
            >>> WeightOnlyLinear.from_linear(nn.Linear(32, 16), bits=8, group_size=None).quantized_weight().shape
            (16, 32)
        """
        return QuantizedWeight(self.qweight, self.scale, self.zero, self.bits, self.group_size)

    @property
    def kernel_applies(self) -> bool:
        """Whether torch's CPU kernel takes this layer (else it dequantizes then matmuls).

        int4: group size 32/64/128/256 (the rows are padded to the kernel's multiple of 16 at packing).
        int8: per channel, and with bf16 activations ``in_features`` a multiple of 16: torch 2.13's bf16
        int8 kernel reads past the row otherwise and crashes the process (SIGSEGV, no exception).
        """
        if self.qweight.device.type != "cpu":
            return False
        if self.bits == 4:
            return self.group_size in INT4_KERNEL_GROUPS
        return self.group_size == self.in_features and (
            self.compute_dtype != torch.bfloat16 or self.in_features % 16 == 0)

    @property
    def uses_kernel(self) -> bool:
        """Whether ``forward`` runs torch's kernel (else dequantize + ``F.linear``).

        Example:
            >>> WeightOnlyLinear.from_linear(nn.Linear(64, 16), bits=8, group_size=32).uses_kernel
            False
        """
        if self.backend == "dequant":
            return False
        if self.backend == "kernel":
            return True
        return self.kernel_applies and self.compute_dtype == torch.bfloat16

    def prepare(self) -> None:
        """Build what the kernel needs from the stored buffers (int4: its packed layout); done once at load
        so the first forward is not slower than the rest.

        Example:
            >>> m = WeightOnlyLinear.from_linear(nn.Linear(64, 32), bits=4, group_size=32); m.prepare()
        """
        key = (self.compute_dtype, self.backend)
        if not self.uses_kernel:
            self._kernel = {"key": key, "mode": "dequant"}
            return
        # Outside inference mode: a tensor made inside it could not be used by a later forward made outside.
        with torch.inference_mode(False), torch.no_grad():
            if self.bits == 4:
                codes, scale, zero = _codes(self.qweight, 4), self.scale, self.zero
                pad = -self.out_features % 16  # the packer takes whole blocks of 16 rows; extra rows are cut off
                if pad:
                    codes = F.pad(codes, (0, 0, 0, pad), value=8)
                    scale, zero = F.pad(scale, (0, 0, 0, pad)), F.pad(zero, (0, 0, 0, pad))
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 1)
                # The kernel reads [in/group, out, 2] = (scale, zero) in the activations' dtype.
                sz = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(self.compute_dtype)
                self._kernel = {"key": key, "mode": "int4", "packed": packed, "scales_and_zeros": sz}
            else:
                zero = self.zero.reshape(-1).to(torch.float32)
                # A symmetric layer (all zeros) skips the zero-point term: two ops fewer per call.
                self._kernel = {"key": key, "mode": "int8", "q": self.qweight,
                                "scale": self.scale.reshape(-1).to(self.compute_dtype).contiguous(),
                                **({"zero": zero} if bool(zero.any()) else {})}

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._kernel = None  # new codes: the packed copy is stale

    def _apply(self, fn: Any, recurse: bool = True) -> WeightOnlyLinear:
        self._kernel = None
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self._kernel
        # The plan is rebuilt when compute_dtype/backend were changed since: the kernel's input rules (the
        # int8 one's crash above all) are checked for the settings actually in force.
        if k is None or k["key"] != (self.compute_dtype, self.backend):
            self.prepare()
            k = self._kernel
            assert k is not None
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if k["mode"] == "int4":
            xc = x2.to(self.compute_dtype).contiguous()
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(xc, k["packed"], self.group_size, k["scales_and_zeros"])
            if y.shape[-1] != self.out_features:
                y = y[:, : self.out_features]
        elif k["mode"] == "int8":
            xc = x2.to(self.compute_dtype).contiguous()
            # The kernel is symmetric (w = q * scale); the zero point adds sum(x) * zero to every output.
            y = torch.ops.aten._weight_int8pack_mm(xc, k["q"], k["scale"])
            if "zero" in k:
                y = y.to(torch.float32) + x2.to(torch.float32).sum(-1, keepdim=True) * k["zero"]
        else:
            w = _dequantize(self.qweight, self.scale, self.zero, self.bits, self.group_size, self.compute_dtype)
            y = F.linear(x2.to(self.compute_dtype), w)
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, bias={self.bias is not None}, "
                f"compute_dtype={_dtype_name(self.compute_dtype)}, kernel={self.uses_kernel}")


class QuantizedEmbedding(nn.Module):
    """A token embedding table as int8 per row (asymmetric), dequantized only for the rows gathered.

    Buffers: ``qweight`` int8 ``[num, dim]`` (``q - 128``), ``scale`` / ``zero`` bf16 ``[num, 1]``. The
    layout is ``WeightOnlyLinear``'s int8 per-channel one, so a tied LM head can share the same buffers.

    Example:
        >>> emb = nn.Embedding(100, 16)
        >>> q = QuantizedEmbedding.from_embedding(emb)
        >>> ids = torch.tensor([[1, 5, 7]])
        >>> bool((q(ids) - emb(ids)).abs().max() < 0.05)
        True
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, *, out_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.out_dtype = num_embeddings, embedding_dim, out_dtype
        self.bits, self.group_size = 8, embedding_dim
        self.register_buffer("qweight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings, 1, dtype=torch.bfloat16))
        self.register_buffer("zero", torch.zeros(num_embeddings, 1, dtype=torch.bfloat16))

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, *, symmetric: bool = False) -> QuantizedEmbedding:
        """Quantize an ``nn.Embedding``'s table, one int8 grid per row.

        Example:
            >>> QuantizedEmbedding.from_embedding(nn.Embedding(10, 8)).qweight.dtype
            torch.int8
        """
        mod = cls(emb.num_embeddings, emb.embedding_dim, out_dtype=emb.weight.dtype)
        qw = quantize_weight(emb.weight, bits=8, group_size=None, symmetric=symmetric)
        mod.qweight, mod.scale, mod.zero = qw.data, qw.scale, qw.zero
        return mod

    def quantized_weight(self) -> QuantizedWeight:
        """The table as a ``QuantizedWeight`` ``[num, dim]``.

        Example:
            >>> QuantizedEmbedding.from_embedding(nn.Embedding(10, 8)).quantized_weight().shape
            (10, 8)
        """
        return QuantizedWeight(self.qweight, self.scale, self.zero, 8, self.embedding_dim)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        q = F.embedding(input_ids, self.qweight).to(torch.float32)
        scale = F.embedding(input_ids, self.scale).to(torch.float32)
        zero = F.embedding(input_ids, self.zero).to(torch.float32)
        return (q * scale + zero).to(self.out_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per row"


def _share_embedding(head: WeightOnlyLinear, emb: QuantizedEmbedding) -> None:
    """Make a tied int8 LM head read the embedding's very tensors (quantized once, stored once)."""
    head.qweight, head.scale, head.zero = emb.qweight, emb.scale, emb.zero
    head._kernel = None


def _is_conv1d(m: nn.Module) -> bool:
    # By name, so that this module does not import transformers to recognise GPT-2's layer.
    t = type(m)
    return t.__name__ == "Conv1D" and t.__module__.startswith("transformers.")


def _linear_shape(m: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a transformers Conv1D (weight [in, out])."""
    if _is_conv1d(m):
        return int(m.weight.shape[0]), int(m.weight.shape[1])
    return int(m.in_features), int(m.out_features)


# ----------------------------------------------------------------------------------------------------------
# Whole model
# ----------------------------------------------------------------------------------------------------------


def _group_for(in_features: int, group_size: int | None, bits: int) -> int:
    """The group size used for a layer: the requested one, or, when it does not divide the layer's inputs, a
    smaller divisor (smaller groups: slightly more bytes, never less accuracy): for int4 the largest the
    kernel takes (704 inputs in groups of 128 → 64, not 88, which would fall back to dequantize+matmul),
    else the largest divisor."""
    if group_size is None or group_size >= in_features:
        return in_features
    if in_features % group_size == 0:
        return group_size
    divisors = [d for d in range(1, group_size + 1) if in_features % d == 0]
    if bits == 4:
        kernel = [d for d in divisors if d in INT4_KERNEL_GROUPS]
        if kernel:
            return max(kernel)
    return max(divisors)


def _module_bytes(m: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))


def _unique_bytes(model: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + [b for b in model.buffers()]:
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def _name_of(model: nn.Module, target: nn.Module | None) -> str | None:
    if target is None:
        return None
    for name, m in model.named_modules():
        if m is target:
            return name
    return None


def _set_untied(model: nn.Module) -> None:
    configs = [getattr(model, "config", None)]
    text = getattr(configs[0], "get_text_config", None)
    if callable(text):
        configs.append(text())
    for cfg in configs:
        if cfg is not None and hasattr(cfg, "tie_word_embeddings"):
            cfg.tie_word_embeddings = False


def quantize_lm(model: nn.Module, *, bits: int, group_size: int | None, embedding: str = "int8",
                lm_head: str = "int8", skip: tuple[str, ...] | list[str] = (),
                compute_dtype: torch.dtype = torch.bfloat16, symmetric: bool = False,
                calibration: torch.Tensor | None = None,
                calibration_samples: int = 512) -> tuple[nn.Module, dict[str, Any]]:
    """A weight-only quantized **copy** of a transformers causal LM, and what was done to each module.

    Every ``nn.Linear`` / ``Conv1D`` except the LM head becomes a ``WeightOnlyLinear`` of ``bits`` (4 or 8) in
    groups of ``group_size`` inputs (None: per output channel; a group size that does not divide a layer's
    inputs is lowered to the largest divisor, and ``meta`` says so). ``skip``: module-name patterns
    (``fnmatch``) kept in float. ``embedding``: ``"int8"`` (per row) or ``"float"``. ``lm_head``: ``"int8"``
    (per channel, the default: int4 on the head costs the most accuracy), ``"same"`` (``bits`` /
    ``group_size``) or ``"float"``.

    Tied embeddings (``lm_head.weight is embed.weight``): with ``embedding="int8"`` and an int8 per-channel
    head, one int8 table serves both (stored once); both float keeps the tie; any other choice **unties**
    them (the head gets its own copy, ``config.tie_word_embeddings`` is set False, ``meta["tied_embeddings"]``
    is ``"untied"``). ``model`` itself is never changed.

    ``symmetric=True`` quantizes the linear layers (and a shared tied table) with zero points at 0, which
    makes int8 per-channel layers a little faster and a little less exact (see ``quantize_weight``);
    ``compute_dtype`` is the activations' dtype inside the quantized matmuls (bf16: the fast kernels).

    ``calibration`` (off by default): token ids ``[rows, tokens]`` (no padding). The float model is run on
    them once, and each quantized linear's per-group clipping ratio is chosen to minimise its output error
    on (up to ``calibration_samples`` of) the activations it saw there (``search_clip``); ``meta`` records
    the mean ratio per layer. It helps int4 most; int8 grids are fine enough that the ratio stays near 1.

    ``meta``: the options, ``modules`` (name → kind, bits, group size, shapes, float and quantized bytes),
    ``kept_float`` (name → why) and ``bytes`` (whole model, float vs quantized, each tensor counted once).

    Example:
        >>> qm, meta = quantize_lm(model, bits=4, group_size=32)                 # doctest: +SKIP
        >>> meta["modules"]["lm_head"]["bits"], meta["bytes"]                      # doctest: +SKIP
        (8, {'float': 427328, 'quantized': 82240})
    """
    if embedding not in EMBEDDING_CHOICES:
        raise ValueError(f"embedding must be one of {EMBEDDING_CHOICES}, got {embedding!r}")
    if lm_head not in LM_HEAD_CHOICES:
        raise ValueError(f"lm_head must be one of {LM_HEAD_CHOICES}, got {lm_head!r}")
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    if group_size is not None and (not isinstance(group_size, int) or group_size <= 0):
        raise ValueError(f"group_size must be a positive int or None (per channel), got {group_size!r}")
    if _dtype_name(compute_dtype) not in _DTYPES:
        raise ValueError(f"compute_dtype must be one of {sorted(_DTYPES)}, got {compute_dtype}")
    if calibration is not None and (calibration.dim() != 2 or calibration.numel() == 0
                                    or calibration.is_floating_point()):
        raise ValueError(f"calibration must be token ids [rows, tokens], got {tuple(calibration.shape)} "
                         f"{calibration.dtype}")
    if not (hasattr(model, "get_input_embeddings") and hasattr(model, "get_output_embeddings")):
        raise TypeError(f"expected a transformers causal LM (PreTrainedModel), got {type(model).__name__}")

    float_bytes = _unique_bytes(model)
    new = copy.deepcopy(model).eval()  # deepcopy keeps a tie a tie (same Parameter object in both places)
    emb = new.get_input_embeddings()
    head = new.get_output_embeddings()
    emb_name, head_name = _name_of(new, emb), _name_of(new, head)
    tied = head is not None and emb is not None and getattr(head, "weight", None) is getattr(emb, "weight", 0)

    head_bits, head_group = {"int8": (8, None), "same": (bits, group_size), "float": (None, None)}[lm_head]
    share = tied and embedding == "int8" and head_bits == 8 and head_group is None
    if not tied:
        tied_state = None
    elif share:
        tied_state = "shared"
    elif embedding == "float" and lm_head == "float":
        tied_state = "float"
    else:
        tied_state = "untied"
        # Untie before anything is replaced: the head gets its own float copy to quantize its own way.
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        _set_untied(new)

    modules: dict[str, dict[str, Any]] = {}
    kept: dict[str, str] = {}
    parents = {name: m for name, m in new.named_modules()}
    plan: list[tuple[str, nn.Module]] = []
    for name, m in list(new.named_modules()):
        if m is head or m is emb or not (isinstance(m, nn.Linear) or _is_conv1d(m)):
            continue
        parent = parents.get(name.rpartition(".")[0])
        if isinstance(parent, nn.MultiheadAttention):
            kept[name] = "inside nn.MultiheadAttention, which reads .weight directly"
        elif any(fnmatch.fnmatchcase(name, p) for p in skip):
            kept[name] = "skip"
        else:
            plan.append((name, m))
    head_alone = (head is not None and head_name is not None and head_bits is not None and not share
                  and (isinstance(head, nn.Linear) or _is_conv1d(head)))
    acts: dict[str, torch.Tensor] = {}
    if calibration is not None:
        # Collected on the float copy before any layer is replaced: every layer is fitted to float inputs.
        acts = _collect_inputs(new, calibration, {n for n, _ in plan} | ({head_name} if head_alone else set()),
                               calibration_samples)

    def quantize_one(name: str, m: nn.Module, b: int, g: int | None, requested: int | None) -> WeightOnlyLinear:
        in_f, _ = _linear_shape(m)
        g = _group_for(in_f, g, b)
        clip = None
        if name in acts:
            w = m.weight.detach().t() if _is_conv1d(m) else m.weight.detach()
            clip = search_clip(w, acts.pop(name), bits=b, group_size=g, symmetric=symmetric)
        q = WeightOnlyLinear.from_linear(m, bits=b, group_size=g, compute_dtype=compute_dtype, symmetric=symmetric,
                                         clip=clip)
        modules[name] = _record("conv1d" if _is_conv1d(m) else "linear", q, _module_bytes(m),
                                requested=requested, out_dtype=m.weight.dtype)
        if clip is not None:
            modules[name]["clip_mean"] = round(float(clip.mean()), 4)
        _set_module(new, name, q)
        return q

    for name, m in plan:
        quantize_one(name, m, bits, group_size, group_size)

    if emb is not None and emb_name is not None:
        if embedding == "int8" and isinstance(emb, nn.Embedding):
            # A table the head shares is quantized the head's way; a table of its own stays asymmetric
            # (its gather never runs a kernel, so a zero point costs nothing).
            qe = QuantizedEmbedding.from_embedding(emb, symmetric=symmetric and share)
            modules[emb_name] = {"kind": "embedding", "bits": 8, "group_size": None,
                                 "in_features": emb.embedding_dim, "out_features": emb.num_embeddings,
                                 "bias": False, "float_bytes": _module_bytes(emb), "bytes": _module_bytes(qe),
                                 "out_dtype": _dtype_name(emb.weight.dtype)}
            _set_module(new, emb_name, qe)
        elif embedding == "int8":
            kept[emb_name] = f"input embedding is a {type(emb).__name__}, not nn.Embedding"
        else:
            kept[emb_name] = "embedding='float'"

    if head is not None and head_name is not None:
        if head_bits is None:
            kept[head_name] = "lm_head='float'"
        elif not (isinstance(head, nn.Linear) or _is_conv1d(head)):
            kept[head_name] = f"LM head is a {type(head).__name__}, not nn.Linear"
        elif share:
            qe = new.get_submodule(emb_name)
            qh = WeightOnlyLinear(qe.embedding_dim, qe.num_embeddings, bits=8, group_size=None,
                                  bias=False, compute_dtype=compute_dtype, out_dtype=qe.out_dtype)
            _share_embedding(qh, qe)
            modules[head_name] = _record("linear", qh, _module_bytes(head), requested=None,
                                         out_dtype=qe.out_dtype)
            modules[head_name].update(bytes=0, tied_to=emb_name)  # its bytes are the embedding's
            _set_module(new, head_name, qh)
        else:
            quantize_one(head_name, head, head_bits, head_group, head_group)

    for m in new.modules():
        if isinstance(m, WeightOnlyLinear):
            m.prepare()
    meta = {"format": FORMAT, "version": VERSION, "bits": bits, "group_size": group_size, "embedding": embedding,
            "lm_head": lm_head, "skip": list(skip), "compute_dtype": _dtype_name(compute_dtype),
            "symmetric": symmetric,
            "calibration": None if calibration is None else {
                "method": "per-group clip search", "rows": int(calibration.shape[0]),
                "tokens": int(calibration.shape[1]), "samples_per_layer": calibration_samples,
                "ratios": list(CLIP_RATIOS)},
            "tied_embeddings": tied_state, "modules": modules, "kept_float": kept,
            "bytes": {"float": float_bytes, "quantized": _unique_bytes(new)}}
    return new, meta


def _record(kind: str, q: WeightOnlyLinear, float_bytes: int, *, requested: int | None,
            out_dtype: torch.dtype) -> dict[str, Any]:
    rec: dict[str, Any] = {"kind": kind, "bits": q.bits,
                           "group_size": None if q.group_size == q.in_features else q.group_size,
                           "in_features": q.in_features, "out_features": q.out_features, "bias": q.bias is not None,
                           "kernel": q.kernel_applies, "float_bytes": float_bytes, "bytes": _module_bytes(q)}
    if requested is not None and q.group_size != min(requested, q.in_features):
        rec["note"] = f"group_size {requested} does not divide {q.in_features} inputs; used {q.group_size}"
    rec["out_dtype"] = _dtype_name(out_dtype)
    return rec


# ----------------------------------------------------------------------------------------------------------
# File
# ----------------------------------------------------------------------------------------------------------


def _float_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def save_quantized(model: nn.Module, meta: dict[str, Any], path: str | os.PathLike[str]) -> int:
    """Write a ``quantize_lm`` model to ONE safetensors file (atomically); return its size in bytes.

    Tensors: the model's state dict (codes, bf16 scales/zeros, float rest); a head sharing a tied int8
    embedding is stored once, under the embedding. Metadata ``modelpress.weight_only``: ``meta`` plus the
    model's config, its class, float dtype and attention implementation, all that ``load_quantized`` needs.

    Example:
        >>> qm, meta = quantize_lm(model, bits=8, group_size=None)              # doctest: +SKIP
        >>> save_quantized(qm, meta, tmp_path / "q.safetensors")                # doctest: +SKIP
        124352
    """
    if meta.get("format") != FORMAT or not isinstance(meta.get("modules"), dict):
        raise ValueError("meta is not a quantize_lm result")
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_json_string"):
        raise TypeError("expected a transformers model with a config")
    dropped: set[str] = set()
    for name, rec in meta["modules"].items():
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"meta names module {name!r}, which the model does not have") from None
        want = QuantizedEmbedding if rec.get("kind") == "embedding" else WeightOnlyLinear
        if not isinstance(m, want):
            raise ValueError(f"module {name!r} is a {type(m).__name__}, meta says {rec.get('kind')}")
        if rec.get("tied_to"):
            dropped.update(f"{name}.{b}" for b in ("qweight", "scale", "zero"))
    state = {k: v for k, v in model.state_dict().items() if k not in dropped}
    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        v = v.detach().cpu()
        storage = v.untyped_storage().data_ptr()
        # safetensors refuses tensors sharing memory; any other alias (a float tie, which transformers
        # re-makes when it builds the model at load) is stored as its own copy.
        tensors[k] = v.clone().contiguous() if storage in seen else v.contiguous()
        seen.add(storage)
    full = dict(meta)
    full["config"] = json.loads(config.to_json_string(use_diff=False))
    full["model_class"] = type(model).__name__
    full["float_dtype"] = _dtype_name(_float_dtype(model))
    full["attn_implementation"] = getattr(config, "_attn_implementation", None)
    target = Path(path)
    _atomic_save_file(tensors, {METADATA_KEY: json.dumps(full, sort_keys=True)}, target)
    return os.stat(target).st_size


def _atomic_save_file(tensors: dict[str, torch.Tensor], metadata: dict[str, str], target: Path) -> None:
    """safetensors ``save_file`` to a temp file beside ``target``, fsync, then ``os.replace``: a reader never
    sees half a file. Written from the tensors directly (``safetensors.torch.save`` would first build the
    whole file in memory, a second copy of the model). Modes as every modelpress file: 0640, folders 0750."""
    import tempfile

    from safetensors.torch import save_file

    from modelpress.filemodes import make_private_dirs, make_private_file

    make_private_dirs(target.parent)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        make_private_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_quantized_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata ``save_quantized`` wrote (options, modules, config); ``ModelLoadError`` when absent.

    Example:
        >>> read_quantized_meta(tmp_path / "q.safetensors")["bits"]              # doctest: +SKIP
        4
    """
    from safetensors import SafetensorError, safe_open

    from modelpress.optimize.sources.weights_file import check_safetensors

    p = Path(path)
    where = f"weight-only LM file {p.name}"
    if not p.is_file():
        raise ModelLoadError(f"{where} does not exist")
    check_safetensors(p)
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(f"{where} cannot be read as safetensors ({e})") from None
    if raw is None:
        raise ModelLoadError(f"{where} has no '{METADATA_KEY}' metadata: it was not written by save_quantized "
                             "(or its header was rewritten); quantize the model again")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise ModelLoadError(f"{where}: its '{METADATA_KEY}' metadata is not JSON") from None
    _check_meta(meta, where)
    return meta


def _check_meta(meta: Any, where: str) -> None:
    def bad(why: str) -> ModelLoadError:
        return ModelLoadError(f"{where}: metadata {why}; quantize the model again with quantize_lm/save_quantized")

    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise bad(f"is not {FORMAT}")
    if meta.get("version") != VERSION:
        raise bad(f"has version {meta.get('version')!r}; this modelpress reads version {VERSION}")
    if meta.get("bits") not in (4, 8):
        raise bad(f"has bits {meta.get('bits')!r} (expected 4 or 8)")
    if meta.get("compute_dtype") not in _DTYPES or meta.get("float_dtype") not in _DTYPES:
        raise bad("names no known compute_dtype / float_dtype")
    if not isinstance(meta.get("config"), dict) or not isinstance(meta["config"].get("model_type"), str):
        raise bad("holds no model config with a model_type")
    if not isinstance(meta.get("model_class"), str):
        raise bad("names no model class")
    modules = meta.get("modules")
    if not isinstance(modules, dict):
        raise bad("lists no quantized modules")
    for name, rec in modules.items():
        ok = (isinstance(rec, dict) and rec.get("kind") in ("linear", "conv1d", "embedding")
              and rec.get("bits") in (4, 8)
              and isinstance(rec.get("in_features"), int) and isinstance(rec.get("out_features"), int)
              and rec["in_features"] > 0 and rec["out_features"] > 0
              and (rec.get("group_size") is None or (isinstance(rec["group_size"], int) and rec["group_size"] > 0
                                                      and rec["in_features"] % rec["group_size"] == 0))
              and isinstance(rec.get("bias"), bool)
              and (rec.get("tied_to") is None or rec["tied_to"] in modules)
              and rec.get("out_dtype", "float32") in _DTYPES)
        if not ok:
            raise bad(f"describes module {name!r} inconsistently")
        if rec["kind"] == "embedding" and rec["bits"] != 8:
            raise bad(f"has an int{rec['bits']} embedding {name!r}; only int8 embeddings exist")


def load_quantized(path: str | os.PathLike[str], *, compute_dtype: torch.dtype | None = None,
                   backend: str = "auto") -> nn.Module:
    """Rebuild a ``save_quantized`` model: architecture from the stored config, quantized modules, tensors.

    The config's ``model_type`` must be a causal LM built into transformers (no ``trust_remote_code``, no
    config entry that loads code or hub kernels); every tensor must be exactly the one the rebuilt model
    expects (names, shapes, dtypes); otherwise ``ModelLoadError`` says what does not fit. ``compute_dtype``
    overrides the stored one (e.g. ``torch.float32`` for exact, slower matmuls). Returned in eval mode,
    kernels packed for this host.

    Example:
        >>> m = load_quantized(tmp_path / "q.safetensors")                       # doctest: +SKIP
        >>> TorchLM(m).logits(ids, torch.ones_like(ids)).shape                    # doctest: +SKIP
        torch.Size([1, 8, 256])
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from modelpress.optimize.hf_env import prepare_transformers
    from modelpress.optimize.sources.hf_files import ATTN_IMPLEMENTATIONS, config_problems

    p = Path(path)
    where = f"weight-only LM file {p.name}"
    meta = read_quantized_meta(p)
    cfg_dict = dict(meta["config"])
    model_type = cfg_dict["model_type"]
    problems = config_problems(cfg_dict, "stored config")
    if problems:
        raise ModelLoadError(f"{where}: " + "; ".join(problems))
    attn = meta.get("attn_implementation")
    if attn is not None and attn not in ATTN_IMPLEMENTATIONS:
        raise ModelLoadError(f"{where}: attention implementation {attn!r} is not one of {ATTN_IMPLEMENTATIONS}")

    prepare_transformers()
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(f"{where}: model_type {model_type!r} is not a causal LM built into transformers; "
                             "modelpress never runs a model's own code")
    float_dtype = _DTYPES[meta["float_dtype"]]
    cdtype = compute_dtype if compute_dtype is not None else _DTYPES[meta["compute_dtype"]]
    try:
        cfg = CONFIG_MAPPING[model_type].from_dict(cfg_dict)
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=False, dtype=float_dtype,
                                                 **({"attn_implementation": attn} if attn else {}))
    except Exception as e:  # noqa: BLE001 - any failure to build from a stored config is the file's fault
        if is_task_control(e):
            raise
        raise ModelLoadError(f"{where}: its config does not build a {model_type} model "
                             f"({type(e).__name__}: {e})") from None
    if type(model).__name__ != meta["model_class"]:
        raise ModelLoadError(f"{where}: config builds {type(model).__name__}, the file was saved from "
                             f"{meta['model_class']}")

    modules: dict[str, dict[str, Any]] = meta["modules"]
    for name, rec in modules.items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise ModelLoadError(f"{where}: metadata names module {name!r}, "
                                 f"which {meta['model_class']} lacks") from None
        _install(model, name, old, rec, where, cdtype, backend)
    for name, rec in modules.items():
        if rec.get("tied_to"):
            head, emb = model.get_submodule(name), model.get_submodule(rec["tied_to"])
            if not (isinstance(head, WeightOnlyLinear) and isinstance(emb, QuantizedEmbedding)
                    and head.bits == 8 and head.group_size == emb.embedding_dim
                    and (head.out_features, head.in_features) == (emb.num_embeddings, emb.embedding_dim)):
                raise ModelLoadError(f"{where}: metadata ties {name!r} to {rec['tied_to']!r}, which do not fit")

    shared = {f"{n}.{b}" for n, r in modules.items() if r.get("tied_to") for b in ("qweight", "scale", "zero")}
    expected = {k: v for k, v in model.state_dict().items() if k not in shared}
    try:
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(f"{where} cannot be read as safetensors ({e})") from None
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ModelLoadError(f"{where}: tensors do not fit its metadata: missing {missing[:5]}, "
                             f"unexpected {extra[:5]}")
    for k, want in expected.items():
        got = tensors[k]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ModelLoadError(f"{where}: tensor {k} is {got.dtype} {tuple(got.shape)}, the model expects "
                                 f"{want.dtype} {tuple(want.shape)}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise ModelLoadError(f"{where}: tensor {k} contains NaN or Inf")
    model.load_state_dict(tensors, strict=False)
    for name, rec in modules.items():
        if rec.get("tied_to"):
            _share_embedding(model.get_submodule(name), model.get_submodule(rec["tied_to"]))
    model.eval()
    for m in model.modules():
        if isinstance(m, WeightOnlyLinear):
            m.prepare()
    return model


def _install(model: nn.Module, name: str, old: nn.Module, rec: dict[str, Any], where: str,
             cdtype: torch.dtype, backend: str) -> None:
    in_f, out_f = rec["in_features"], rec["out_features"]
    out_dtype = _DTYPES[rec.get("out_dtype", "float32")]
    if rec["kind"] == "embedding":
        fits = isinstance(old, nn.Embedding) and (old.num_embeddings, old.embedding_dim) == (out_f, in_f)
        new: nn.Module = QuantizedEmbedding(out_f, in_f, out_dtype=out_dtype)
    else:
        if rec["kind"] == "conv1d":
            fits = _is_conv1d(old) and tuple(old.weight.shape) == (in_f, out_f)
        else:
            fits = isinstance(old, nn.Linear) and (old.in_features, old.out_features) == (in_f, out_f)
        fits = fits and (getattr(old, "bias", None) is not None) == rec["bias"]
        try:
            new = WeightOnlyLinear(in_f, out_f, bits=rec["bits"], group_size=rec["group_size"], bias=rec["bias"],
                                   compute_dtype=cdtype, backend=backend,
                                   out_dtype=out_dtype)
        except ValueError as e:
            raise ModelLoadError(f"{where}: module {name!r}: {e}") from None
    if not fits:
        raise ModelLoadError(f"{where}: metadata says {name!r} is a {rec['kind']} {in_f}->{out_f}"
                             f"{' with bias' if rec.get('bias') else ''}; the architecture has "
                             f"{type(old).__name__} {tuple(getattr(old, 'weight', torch.empty(0)).shape)}")
    _set_module(model, name, new)


__all__ = ["CLIP_RATIOS", "FORMAT", "QuantizedEmbedding", "QuantizedWeight", "WeightOnlyLinear", "load_quantized",
           "quantize_lm", "quantize_weight", "read_quantized_meta", "save_quantized", "search_clip"]

"""The layers of torch weight-only quantization (``lm.weight_only``): a quantized weight, ``WeightOnlyLinear`` and
``QuantizedEmbedding``, and the per-group clipping search.

The format, the kernels and why activations are bf16 are described in ``lm.weight_only``; this module holds
what one layer needs, so that the whole-model pass (``lm.weight_only``) and the file (``lm.weight_only_files``)
share it without importing each other.

Example:
    >>> w = torch.randn(8, 64)
    >>> q = quantize_weight(w, bits=4, group_size=32)
    >>> bool((q.dequantize() - w).abs().max() <= q.scale.float().max())
    True
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn



FORMAT = "modelpress.weight_only"
VERSION = 1
METADATA_KEY = "modelpress.weight_only"
# The only group sizes aten._weight_int4pack_mm_for_cpu accepts.
INT4_KERNEL_GROUPS = (32, 64, 128, 256)
EMBEDDING_CHOICES = ("int8", "float")
LM_HEAD_CHOICES = ("int8", "same", "float")
BACKENDS = ("auto", "kernel", "dequant")
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
# A group whose values are all equal has no range; its scale still must be > 0 (codes divide by it).
_TINY_SCALE = 1e-30


def dtype_name(dtype: torch.dtype) -> str:
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
        if is_conv1d(linear):
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
                f"compute_dtype={dtype_name(self.compute_dtype)}, kernel={self.uses_kernel}")


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


def share_embedding(head: WeightOnlyLinear, emb: QuantizedEmbedding) -> None:
    """Make a tied int8 LM head read the embedding's very tensors (quantized once, stored once)."""
    head.qweight, head.scale, head.zero = emb.qweight, emb.scale, emb.zero
    head._kernel = None


def is_conv1d(m: nn.Module) -> bool:
    # By name, so that this module does not import transformers to recognise GPT-2's layer.
    t = type(m)
    return t.__name__ == "Conv1D" and t.__module__.startswith("transformers.")


def linear_shape(m: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a transformers Conv1D (weight [in, out])."""
    if is_conv1d(m):
        return int(m.weight.shape[0]), int(m.weight.shape[1])
    return int(m.in_features), int(m.out_features)


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


__all__ = ["BACKENDS", "CLIP_RATIOS", "DTYPES", "EMBEDDING_CHOICES", "FORMAT", "INT4_KERNEL_GROUPS", "LM_HEAD_CHOICES",
           "METADATA_KEY", "QuantizedEmbedding", "QuantizedWeight", "VERSION", "WeightOnlyLinear", "dtype_name",
           "is_conv1d", "linear_shape", "quantize_weight", "search_clip", "set_module", "share_embedding"]

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
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


# The layers and the file live in their own modules; their public names are this module's too (one import for users).
from modelpress.optimize.lm.weight_only_files import load_quantized, read_quantized_meta, save_quantized
from modelpress.optimize.lm.weight_only_layers import (CLIP_RATIOS, DTYPES, EMBEDDING_CHOICES, FORMAT,
                                                       INT4_KERNEL_GROUPS, LM_HEAD_CHOICES, METADATA_KEY, VERSION,
                                                       QuantizedEmbedding, QuantizedWeight, WeightOnlyLinear,
                                                       dtype_name, is_conv1d, linear_shape, quantize_weight,
                                                       search_clip, set_module, share_embedding)


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
    # Per-layer detail for ``meta`` only (what each layer holds in memory); the job's reported size is always the
    # bytes of the saved file.
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
    if dtype_name(compute_dtype) not in DTYPES:
        raise ValueError(f"compute_dtype must be one of {sorted(DTYPES)}, got {compute_dtype}")
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
        if m is head or m is emb or not (isinstance(m, nn.Linear) or is_conv1d(m)):
            continue
        parent = parents.get(name.rpartition(".")[0])
        if isinstance(parent, nn.MultiheadAttention):
            kept[name] = "inside nn.MultiheadAttention, which reads .weight directly"
        elif any(fnmatch.fnmatchcase(name, p) for p in skip):
            kept[name] = "skip"
        else:
            plan.append((name, m))
    head_alone = (head is not None and head_name is not None and head_bits is not None and not share
                  and (isinstance(head, nn.Linear) or is_conv1d(head)))
    acts: dict[str, torch.Tensor] = {}
    if calibration is not None:
        # Collected on the float copy before any layer is replaced: every layer is fitted to float inputs.
        acts = _collect_inputs(new, calibration, {n for n, _ in plan} | ({head_name} if head_alone else set()),
                               calibration_samples)

    def quantize_one(name: str, m: nn.Module, b: int, g: int | None, requested: int | None) -> WeightOnlyLinear:
        in_f, _ = linear_shape(m)
        g = _group_for(in_f, g, b)
        clip = None
        if name in acts:
            w = m.weight.detach().t() if is_conv1d(m) else m.weight.detach()
            clip = search_clip(w, acts.pop(name), bits=b, group_size=g, symmetric=symmetric)
        q = WeightOnlyLinear.from_linear(m, bits=b, group_size=g, compute_dtype=compute_dtype, symmetric=symmetric,
                                         clip=clip)
        modules[name] = _record("conv1d" if is_conv1d(m) else "linear", q, _module_bytes(m),
                                requested=requested, out_dtype=m.weight.dtype)
        if clip is not None:
            modules[name]["clip_mean"] = round(float(clip.mean()), 4)
        set_module(new, name, q)
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
                                 "out_dtype": dtype_name(emb.weight.dtype)}
            set_module(new, emb_name, qe)
        elif embedding == "int8":
            kept[emb_name] = f"input embedding is a {type(emb).__name__}, not nn.Embedding"
        else:
            kept[emb_name] = "embedding='float'"

    if head is not None and head_name is not None:
        if head_bits is None:
            kept[head_name] = "lm_head='float'"
        elif not (isinstance(head, nn.Linear) or is_conv1d(head)):
            kept[head_name] = f"LM head is a {type(head).__name__}, not nn.Linear"
        elif share:
            qe = new.get_submodule(emb_name)
            qh = WeightOnlyLinear(qe.embedding_dim, qe.num_embeddings, bits=8, group_size=None,
                                  bias=False, compute_dtype=compute_dtype, out_dtype=qe.out_dtype)
            share_embedding(qh, qe)
            modules[head_name] = _record("linear", qh, _module_bytes(head), requested=None,
                                         out_dtype=qe.out_dtype)
            modules[head_name].update(bytes=0, tied_to=emb_name)  # its bytes are the embedding's
            set_module(new, head_name, qh)
        else:
            quantize_one(head_name, head, head_bits, head_group, head_group)

    for m in new.modules():
        if isinstance(m, WeightOnlyLinear):
            m.prepare()
    meta = {"format": FORMAT, "version": VERSION, "bits": bits, "group_size": group_size, "embedding": embedding,
            "lm_head": lm_head, "skip": list(skip), "compute_dtype": dtype_name(compute_dtype),
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
    rec["out_dtype"] = dtype_name(out_dtype)
    return rec


# ----------------------------------------------------------------------------------------------------------
# File
# ----------------------------------------------------------------------------------------------------------


__all__ = ["CLIP_RATIOS", "FORMAT", "METADATA_KEY", "QuantizedEmbedding", "QuantizedWeight", "WeightOnlyLinear",
           "load_quantized", "quantize_lm", "quantize_weight", "read_quantized_meta", "save_quantized", "search_clip"]

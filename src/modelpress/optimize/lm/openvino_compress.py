"""Weight-only compression of a causal LM exported to OpenVINO (``lm.openvino_lm.export_lm``), through NNCF.

``compress_lm`` runs ``nncf.compress_weights`` on a copy (NNCF changes the model it is given) in one of
``MODES``, with AWQ and scale estimation on calibration rows when asked, and records what each weight became
as read back from the graph (``weight_precisions``): the embedding, the LM head (tied or not), the other
layers by mode and group.

Example:
    >>> q, meta = compress_lm(export_lm(model), mode="int4_asym", group_size=128)   # doctest: +SKIP
    >>> meta["lm_head"]["mode"]                                                     # doctest: +SKIP
    'int8_asym'
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from modelpress.errors import RecipeError
from modelpress.optimize.lm.openvino_lm import BEAM, IDS, KEEP, LOGITS, MASK, POS

#: ``compress_lm`` modes → NNCF's ``CompressWeightsMode`` member names.
MODES = {"int8_asym": "INT8_ASYM", "int8_sym": "INT8_SYM", "int4_asym": "INT4_ASYM", "int4_sym": "INT4_SYM"}


def compress_lm(ov_model: Any, *, mode: str, group_size: int | None, ratio: float = 1.0,
                calibration: Sequence[torch.Tensor] | None = None, awq: bool = False,
                scale_estimation: bool = False, all_layers: bool | None = None,
                group_size_fallback: str = "adjust") -> tuple[Any, dict[str, Any]]:
    """Weight-only ``nncf.compress_weights`` of an ``export_lm`` model: ``(compressed copy, meta)``.

    ``mode``: ``"int8_asym"`` (per output channel; ``group_size`` must be None or -1), ``"int4_asym"`` or
    ``"int4_sym"`` (``group_size`` weights share a scale, e.g. 32 or 128; -1 for per channel); ``ratio`` is
    the share of the int4-eligible layers kept int4, the rest int8_asym. A weight whose input channels
    ``group_size`` does not divide (an MLP of 704 channels at group 128) gets, with ``group_size_fallback=
    "adjust"``, the largest power-of-two group (≥ 32) that divides them, else int8_asym; ``"error"`` refuses
    (NNCF's default) and ``"ignore"`` leaves it float; ``meta["layers"]`` shows what each got. ``awq`` and
    ``scale_estimation`` are NNCF's data-aware int4 refinements and need ``calibration``: token rows (1-D
    tensors, or 2-D ``[rows, tokens]`` split into rows), each fed as one unpadded prompt with an empty cache.

    The embedding and the LM head: with an int4 mode NNCF keeps the first layer (the embedding ``Gather``) and
    the last ``MatMul`` (the LM head) in int8_asym per channel unless ``all_layers=True`` (None: NNCF's default,
    False); a tied LM head (GPT-2) shares the embedding's one weight, compressed once. With int8 modes every
    weight, both of those included, is int8. ``meta`` does not repeat this promise: it reports the precision
    each weight really has in the returned graph (``embedding``, ``lm_head``, ``layers`` counted by
    precision, ``tied_lm_head``), with the settings and the NNCF version.

    The input model is not changed (NNCF rewrites constants in place, so it works on a clone).

    Example:
        >>> q, meta = compress_lm(ov_model, mode="int4_asym", group_size=32)           # doctest: +SKIP
        >>> meta["embedding"], meta["lm_head"], meta["layers"]                          # doctest: +SKIP
        ('int8_asym', 'int8_asym', {'int4_asym g32': 14})
    """
    import nncf

    from modelpress.optimize.runtimes.openvino_rt import OpenVinoRuntime

    if mode not in MODES:
        raise RecipeError(f"compress_lm mode {mode!r} is not one of {', '.join(MODES)}")
    int8 = mode.startswith("int8")
    if int8 and group_size not in (None, -1):
        raise RecipeError(f"{mode} is per output channel in NNCF: group_size must be None or -1, not {group_size}")
    if int8 and (awq or scale_estimation or ratio != 1.0):
        raise RecipeError(f"awq, scale_estimation and ratio are int4 options; {mode} takes none of them")
    if not int8 and (group_size is None or group_size == 0 or group_size < -1):
        raise RecipeError(f"{mode} needs a group_size (e.g. 32, 64, 128; -1 for per channel), not {group_size}")
    if group_size_fallback not in ("adjust", "ignore", "error"):
        raise RecipeError(f"group_size_fallback must be adjust, ignore or error, not {group_size_fallback!r}")
    if not 0.0 < ratio <= 1.0:
        raise RecipeError(f"ratio must be in (0, 1], not {ratio}")
    if (awq or scale_estimation) and not calibration:
        raise RecipeError("awq and scale_estimation are data-aware: give calibration token rows")
    kwargs: dict[str, Any] = {"mode": getattr(nncf.CompressWeightsMode, MODES[mode])}
    if not int8:
        kwargs.update(group_size=int(group_size), ratio=float(ratio))  # type: ignore[arg-type]
        kwargs["advanced_parameters"] = nncf.AdvancedCompressionParameters(
            group_size_fallback_mode=nncf.GroupSizeFallbackMode(group_size_fallback))
    if all_layers is not None:
        kwargs["all_layers"] = bool(all_layers)
    if awq:
        kwargs["awq"] = True
    if scale_estimation:
        kwargs["scale_estimation"] = True
    items = _calibration_items(ov_model, calibration) if calibration else []
    if items:
        kwargs.update(dataset=nncf.Dataset(items), subset_size=len(items))
    q = nncf.compress_weights(ov_model.clone(), **kwargs)
    meta: dict[str, Any] = {
        "method": "nncf.compress_weights", "mode": mode,
        "group_size": None if int8 else int(group_size),  # type: ignore[arg-type]
        "ratio": float(ratio), "group_size_fallback": None if int8 else group_size_fallback,
        "all_layers": all_layers, "awq": bool(awq), "scale_estimation": bool(scale_estimation),
        "calibration_rows": len(items),
        # Float in the graph. The CPU plugin may still quantize them per call for compressed-weight layers
        # (DYNAMIC_QUANTIZATION_GROUP_SIZE, 32 by default here), recorded by ``OpenVinoLM.execution()``.
        "activations": "float in the graph (weight-only)",
        "versions": OpenVinoRuntime().versions(),
    }
    meta.update(weight_precisions(q))
    return q, meta


def _calibration_items(ov_model: Any, rows: Sequence[torch.Tensor]) -> list[dict[str, np.ndarray]]:
    """One NNCF sample per token row: the inputs of an unpadded prefill with an empty cache.

    NNCF resets a stateful model's variables before each sample, so every row starts from an empty cache.
    Every position's logits are asked for, so the LM head sees as many activations as the other layers.
    """
    names = {p.any_name for p in ov_model.inputs}
    items = []
    for t in rows:
        t = torch.as_tensor(t)
        for r in (t.reshape(1, -1) if t.dim() == 1 else t.reshape(-1, t.shape[-1])):
            n = int(r.shape[0])
            item = {IDS: r.reshape(1, n).long().numpy(), MASK: np.ones((1, n), np.int64),
                    POS: np.arange(n, dtype=np.int64).reshape(1, n), KEEP: np.arange(n, dtype=np.int64),
                    BEAM: np.zeros(1, np.int32)}
            items.append({k: v for k, v in item.items() if k in names})
    return items


# Nodes between a weight's Constant and the op using it: NNCF's dequantization chain and layout ops.
_CHAIN = {"Convert", "Reshape", "Multiply", "Subtract", "Transpose", "Unsqueeze", "Maximum"}
_INT = {"u4": "int4", "i4": "int4", "u8": "int8", "i8": "int8"}


def _weight_of(port: Any) -> tuple[Any, str] | None:
    """(weight Constant, precision label) feeding one op input, or None when the input is not a weight.

    A weight is a subgraph of Constants and dequantization/layout ops only: anything else on the way up
    (a Parameter, a MatMul, a ReadValue) makes the input an activation.
    """
    seen, todo, consts, has_sub = set(), [port.get_source_output().get_node()], [], False
    while todo:
        node = todo.pop()
        if node.get_friendly_name() in seen:
            continue
        seen.add(node.get_friendly_name())
        kind = node.get_type_name()
        if kind == "Constant":
            consts.append(node)
        elif kind in _CHAIN:
            has_sub |= kind == "Subtract"
            todo += [node.input_value(i).get_node() for i in range(node.get_input_size())]
        else:
            return None
    big = [c for c in consts if len(c.get_output_shape(0)) >= 2]
    if not big:
        return None
    w = max(big, key=lambda c: int(np.prod(c.get_output_shape(0))))
    t = w.get_output_element_type(0).get_type_name()
    if t not in _INT:
        return w, t  # f32 / f16: not compressed
    label = f"{_INT[t]}_{'asym' if has_sub else 'sym'}"
    shape = list(w.get_output_shape(0))
    if len(shape) == 3:  # [out, groups, group size]: one scale per group
        label += f" g{shape[-1]}"
    return w, label


def _from_input(port: Any, name: str) -> bool:
    """Whether an op input comes (through Converts and reshapes) straight from the model input ``name``."""
    node = port.get_source_output().get_node()
    while node.get_type_name() in ("Convert", "Reshape", "Squeeze", "Unsqueeze"):
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Parameter" and name in node.output(0).get_names()


def weight_precisions(ov_model: Any) -> dict[str, Any]:
    """The precision of every weight in an OpenVINO LM, read from its graph (not from the settings asked for).

    ``embedding``: the token embedding (the ``Gather`` of ``input_ids`` rows); ``lm_head``: the ``MatMul``
    that produces ``logits``; ``layers``: every other weighted ``MatMul`` counted by label (``"int4_asym g32"``,
    ``"int8_asym"``, ``"f32"``); ``other_embeddings``: other weight ``Gather``s (GPT-2's position table) by
    label; ``tied_lm_head``: the LM head reads the embedding's own weight.

    Example:
        >>> weight_precisions(export_lm(model))                                          # doctest: +SKIP
        {'embedding': 'f32', 'lm_head': 'f32', 'tied_lm_head': False, 'layers': {'f32': 14}, 'other_embeddings': {}}
    """
    head = _lm_head(ov_model)
    head_name = head.get_friendly_name() if head is not None else None
    out: dict[str, Any] = {"embedding": None, "lm_head": None, "tied_lm_head": False}
    layers: dict[str, int] = {}
    others: dict[str, int] = {}
    emb_w = head_w = None
    for op in ov_model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("Gather", "MatMul"):
            continue
        got = _weight_of(op.input(0 if kind == "Gather" else 1))
        if got is None:
            continue  # activations only (attention, shape arithmetic, the cache's beam_idx reorder)
        if kind == "Gather":
            if out["embedding"] is None and _from_input(op.input(1), IDS):
                emb_w, out["embedding"] = got
            else:
                others[got[1]] = others.get(got[1], 0) + 1
        elif op.get_friendly_name() == head_name:
            head_w, out["lm_head"] = got
        else:
            layers[got[1]] = layers.get(got[1], 0) + 1
    if emb_w is not None and head_w is not None:
        out["tied_lm_head"] = emb_w.get_friendly_name() == head_w.get_friendly_name()
    out["layers"] = dict(sorted(layers.items()))
    out["other_embeddings"] = dict(sorted(others.items()))
    return out


def _lm_head(ov_model: Any) -> Any:
    """The MatMul that makes ``logits`` (walking back from the output through single-input ops)."""
    node = ov_model.output(LOGITS).get_node()
    for _ in range(32):
        if node.get_type_name() == "MatMul":
            return node
        if node.get_input_size() == 0:
            return None
        node = node.input_value(0).get_node()
    return None


__all__ = ["MODES", "compress_lm", "weight_precisions"]

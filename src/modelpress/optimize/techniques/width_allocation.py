"""How a transformer's width level is spent: heads or FFN neurons, chosen by measurement on validation rows.

A width ``level`` names an amount of compute to remove: what cutting ``level`` of every layer's FFN neurons and
``level / 2`` of its heads removes from the layer's per-token multiply-adds (Q, K, V and O projections, the
attention products at the deployed sequence length, and the FFN). The same amount can be had with fewer heads
cut and more neurons, and which costs the model less differs by model. On all-MiniLM-L6-v2 at 0.3, after the cut
and refit, validation cosine was 0.944 with 10 heads kept, 0.949 with 11 and 0.956 with all 12 (and 941 FFN
neurons). So a few splits of the same compute (``level / 2``, ``level / 4`` and none of the heads, the rest
from the FFN) are each cut and refitted, scored by cosine to the float model on validation rows (never eval
rows), and the best is kept.

Example:
    >>> [(a.heads_kept, a.ffn_kept) for a in allocations(level=0.3, heads=12, head_dim=32, hidden=384, ffn=1536,
    ...                                                   seq=128, heads_now=12, ffn_now=1536)]
    [(10, 1088), (12, 960)]
    >>> [(a.heads_kept, a.ffn_kept) for a in allocations(level=0.3, heads=4, head_dim=8, hidden=32, ffn=64,
    ...                                                   seq=16, heads_now=4, ffn_now=64)]
    [(3, 53), (4, 33)]
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from torch import fx

from modelpress.optimize.measure import as_tuple, compute_metric, n_samples, predict
from modelpress.optimize.recipes import TransformerPruneConfig
from modelpress.optimize.techniques.registry import StepContext, StepOutput, handler_for
from modelpress.optimize.techniques.transformer_graph import find_blocks

#: Rows each split is scored on (validation rows, else train rows).
SCORE_ROWS = 128
#: Kept FFN neurons and head columns are multiples of this, on models at least ``ALIGN_FROM`` wide.
ALIGN = 64
ALIGN_FROM = 256


def _aligned(n: float, *, step: int, upto: int) -> int:
    """``n`` rounded to the nearest multiple of ``step``, at least ``step`` and at most ``upto``."""
    return max(step, min(upto // step * step, int(round(n / step)) * step))


#: The share of a transformer layer's *time* its FFN takes, measured, not counted: all-MiniLM-L6-v2 int8 in
#: OpenVINO at batch 32 × 128 tokens, one thread (``benchmarks/layer_time.py``). A layer took 30 ms; halving
#: its FFN saved 4.7 ms of them, cutting a third of its heads 4.9 ms, and dropping it all 30. LayerNorms,
#: residual adds, the attention's softmax and the heads' reshapes are most of the rest. A multiply-add count puts
#: the FFN at 0.63 of the layer: spending a level on neurons by that count saves half the time it promises.
FFN_TIME_SHARE = 0.31


def layers_then_ffn(level: float, *, layers: int, ffn: int, layers_now: int, ffn_now: int,
                    align: int = 1) -> tuple[int, int]:
    """(layers kept, FFN neurons per kept layer) that keep ``1 − level`` of the float model's time: as few
    layers as that time allows, their FFNs cut for the rest (a multiple of ``align``, rounded down).

    The float model had ``layers`` layers of ``ffn`` neurons; the input (a search's previous student) has
    ``layers_now`` of ``ffn_now``: neither grows back. Whole layers first because, at the same time saved, a
    student one layer short and distilled came closer to all-MiniLM-L6-v2 than one with fewer heads or neurons
    in every layer (validation cosine after 150 s of distillation: 5 layers of 1,280 neurons 0.976, 6 layers of
    8 heads and 1,152 neurons 0.958), and a dropped layer takes its LayerNorms and softmax with it.

    Example:
        >>> layers_then_ffn(0.22, layers=6, ffn=1536, layers_now=6, ffn_now=1536, align=64)
        (5, 1216)
        >>> layers_then_ffn(0.4, layers=6, ffn=1536, layers_now=5, ffn_now=1216, align=64)
        (4, 1024)
    """
    left = (1.0 - level) * layers  # in float layers' time
    keep = min(layers_now, max(1, math.ceil(left - 1e-9)))
    per_layer = left / keep
    frac = (per_layer - (1.0 - FFN_TIME_SHARE)) / FFN_TIME_SHARE
    kept = int(max(0.05, min(1.0, frac)) * ffn) // align * align
    return keep, max(align, min(ffn_now, kept))


@dataclass(frozen=True)
class Allocation:
    heads_kept: int
    ffn_kept: int


def allocations(*, level: float, heads: int, head_dim: int, hidden: int, ffn: int, seq: int, heads_now: int,
                ffn_now: int) -> list[Allocation]:
    """Splits of the same per-token compute as ``level`` of the FFN and ``level / 2`` of the heads (of the float
    model: ``heads``, ``ffn``), for a model that has ``heads_now`` and ``ffn_now`` left; most heads cut first."""
    per_head = (4 * hidden + 2 * seq) * head_dim  # Q, K, V, O columns and the two attention products
    per_neuron = 2 * hidden
    target = per_head * heads * (1 - level / 2) + per_neuron * ffn * (1 - level)
    wide = hidden >= ALIGN_FROM and ffn >= ALIGN_FROM
    head_step = ALIGN // head_dim if wide and head_dim < ALIGN and ALIGN % head_dim == 0 else 1
    out: list[Allocation] = []
    for share in (level / 2, level / 4, 0.0):
        kept_heads = min(heads_now, max(1, round(heads * (1 - share))))
        if head_step > 1 and heads_now >= head_step:
            kept_heads = _aligned(heads * (1 - share), step=head_step, upto=heads_now)
        kept_ffn = int(round((target - per_head * kept_heads) / per_neuron))
        if wide and kept_ffn >= ALIGN:
            kept_ffn = _aligned(kept_ffn, step=ALIGN, upto=ffn_now)
        a = Allocation(kept_heads, kept_ffn)
        if 0.05 * ffn <= kept_ffn <= ffn_now and (kept_heads < heads_now or kept_ffn < ffn_now) and a not in out:
            out.append(a)
    return out


def _sizes(gm: fx.GraphModule) -> tuple[int, int, int, int] | None:
    """(heads, head_dim, hidden, ffn) of the first layer, or None when heads or FFN cannot be cut everywhere."""
    blocks = find_blocks(gm)
    if not blocks or not all(b.heads_cuttable and b.ffn_in for b in blocks):
        return None
    b = blocks[0]
    return (b.heads, b.head_dim, gm.get_submodule(b.q).in_features,
            gm.get_submodule(b.ffn_in).out_features)  # type: ignore[arg-type]


def choose_width_cut(model: fx.GraphModule, level: float, ctx: StepContext, default: TransformerPruneConfig
                     ) -> tuple[StepOutput, TransformerPruneConfig, list[dict[str, Any]]]:
    """Cut ``model`` by each split of ``level``'s compute, keep the one closest to the float model on validation
    rows. Returns its output, its config and every split tried. Falls back to ``default`` alone when the model
    or its data do not allow a choice."""
    ref = ctx.reference
    now, was = _sizes(model), _sizes(ref) if isinstance(ref, fx.GraphModule) else None
    rows = ctx.data.val_inputs if ctx.data.val_inputs is not None else ctx.data.train_inputs
    if now is None or was is None or rows is None or ref is None:
        return handler_for(default).apply(model, default, ctx), default, []
    rows = tuple(t[:SCORE_ROWS] for t in as_tuple(rows))
    seq = int(rows[0].shape[1]) if rows[0].dim() >= 2 else 1
    options = allocations(level=level, heads=was[0], head_dim=was[1], hidden=was[2], ffn=was[3], seq=seq,
                          heads_now=now[0], ffn_now=now[3])
    if len(options) < 2:
        return handler_for(default).apply(model, default, ctx), default, []
    target = predict(ref, rows, batch_size=32)
    best: tuple[float, StepOutput, TransformerPruneConfig] | None = None
    tried: list[dict[str, Any]] = []
    for a in options:
        cfg = TransformerPruneConfig(heads=round(1 - a.heads_kept / now[0], 6), ffn=round(1 - a.ffn_kept / now[3], 6))
        out = handler_for(cfg).apply(copy.deepcopy(model), cfg, ctx)
        score = compute_metric("cosine", predict(out.model, rows, batch_size=32).flatten(1), labels=None,
                               reference=target.flatten(1))
        tried.append({"heads_kept": a.heads_kept, "ffn_kept": a.ffn_kept, "cosine": round(score, 6),
                      "rows": n_samples(rows)})
        ctx.log(f"prune width split: {a.heads_kept} heads, {a.ffn_kept} FFN neurons → cosine {score:.4f}")
        if best is None or score > best[0]:
            best = (score, out, cfg)
        else:
            del out
    assert best is not None
    return best[1], best[2], tried


__all__ = ["ALIGN", "ALIGN_FROM", "Allocation", "FFN_TIME_SHARE", "SCORE_ROWS", "allocations", "choose_width_cut",
           "layers_then_ffn"]

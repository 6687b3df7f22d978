"""``prune_transformer``: cut layers, heads and FFN neurons of a transformer, ranked by importance on data.

Importance is measured on rows that are never reported: the job's train rows, else its validation rows
(``TaskData``), at most ``rows`` of them, trimmed to their longest real token when the source gives a training
view (``ModelSpec.training_view``) so padding does not vote.

* **Layers** (dropped first, never the last): chosen greedily, each round the layer whose removal keeps the
  model's outputs closest (mean cosine) to the uncut model's on those rows. A dropped layer's output is its
  input: the student starts from the teacher's own remaining layers.
* **Heads**: per head, the sum over its ``head_dim`` columns of ‖input column‖₂ · ‖output-projection column‖₂,
  what the head contributes to the projection (a structured form of Wanda, Sun et al., 2023).
* **FFN neurons**: the same measure on the FFN's second projection.

Every kept layer keeps the same number of heads and neurons (neurons a multiple of ``multiple_of``). With
``refit`` (the default), the projection after each cut is refitted by least squares on the same rows so that
the kept heads and neurons reproduce what the whole layer wrote (``refit``). The cuts are recorded by module
name and index, and ``rebuild`` repeats them on a freshly built graph (the refitted weights are weights: they
come with the artifact).

Example:
    >>> from modelpress.optimize.recipes import TransformerPruneConfig
    >>> from modelpress.optimize.techniques.registry import handlers
    >>> TransformerPruneConfig in handlers()
    True
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import fx, nn

from modelpress.errors import UserInputError
from modelpress.optimize.measure import as_tuple, count_params, n_samples
from modelpress.optimize.recipes import TransformerPruneConfig
from modelpress.optimize.techniques.registry import StepContext, StepOutput, register_handler
from modelpress.optimize.techniques.training import is_quantized
from modelpress.optimize.techniques.transformer_graph import (Block, cut_ffn, cut_heads, drop_layers, find_blocks,
                                                               sync_structure)

Trim = Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]


def importance_rows(ctx: StepContext, limit: int) -> tuple[tuple[torch.Tensor, ...], str]:
    """The first ``limit`` train rows, else validation rows, else calibration rows, and which they are.

    Example:
        >>> rows, where = importance_rows(ctx, 256)  # doctest: +SKIP
        >>> where  # doctest: +SKIP
        'train'
    """
    for where, x in (("train", ctx.data.train_inputs), ("validation", ctx.data.val_inputs),
                     ("calibration", ctx.data.calib_inputs)):
        if x is not None and n_samples(x) > 0:
            return tuple(t[:limit] for t in as_tuple(x)), where
    raise UserInputError("prune_transformer needs rows to measure importance on (train, validation or calibration)")


def training_view(model: fx.GraphModule, ctx: StepContext) -> tuple[nn.Module, Trim, str]:
    """``model`` as the source's training view (shorter rows), sharing its parameters; else ``model`` itself.

    Example:
        >>> view, trim, note = training_view(model, ctx)  # doctest: +SKIP
    """
    make = ctx.spec.training_view
    if make is None or not isinstance(model, fx.GraphModule):
        return model, lambda b: b, "the model itself (rows at full length)"
    try:
        view, trim = make()
        sync_structure(view, model)
    except Exception as e:  # noqa: BLE001 - the view is an optimisation: training the model itself still works
        ctx.log(f"training view unavailable ({type(e).__name__}: {str(e)[:200]}); training at full length")
        return model, lambda b: b, f"the model itself ({type(e).__name__} building a view)"
    return view, trim, "a view exported with a dynamic sequence length, rows trimmed to their batch's longest"


def _batches(rows: tuple[torch.Tensor, ...], size: int, trim: Trim) -> list[tuple[torch.Tensor, ...]]:
    n = int(rows[0].shape[0])
    return [trim(tuple(t[i:i + size] for t in rows)) for i in range(0, n, size)]


@torch.no_grad()
def layer_drop_order(view: fx.GraphModule, batches: list[tuple[torch.Tensor, ...]], k: int
                     ) -> tuple[list[int], list[dict[str, Any]]]:
    """Greedily the ``k`` layers whose removal keeps the outputs closest to the uncut model's (mean cosine).

    Each round tries dropping every remaining layer but the last beside those already chosen, on the same rows,
    and keeps the one that costs least: measured, not guessed from weights. Returns the layers and every trial.
    """
    def run(m: nn.Module) -> torch.Tensor:
        return torch.cat([m(*x).flatten(1).float() for x in batches])

    ref = run(view)
    last = len(find_blocks(view)) - 1
    chosen: list[int] = []
    trials: list[dict[str, Any]] = []
    for _ in range(k):
        scored = []
        for i in range(last):
            if i in chosen:
                continue
            trial = copy.deepcopy(view)
            drop_layers(trial, chosen + [i])
            cos = float(nn.functional.cosine_similarity(run(trial), ref, dim=-1).mean())
            scored.append((cos, i))
            trials.append({"dropped": sorted(chosen + [i]), "output_cosine": round(cos, 6)})
        chosen.append(max(scored)[1])
    return sorted(chosen), trials


@torch.no_grad()
def input_gram(view: nn.Module, names: list[str], batches: list[tuple[torch.Tensor, ...]]) -> dict[str, torch.Tensor]:
    """``XᵀX`` of the input ``X`` (every token a row) of each Linear in ``names``, over ``batches`` (float64)."""
    gram: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[..., None]:
        def f(m: nn.Module, a: tuple[torch.Tensor, ...]) -> None:
            x = a[0].detach().flatten(0, -2).double()
            gram[name] = gram.get(name, 0) + x.T @ x
        return f

    hooks = [view.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        for x in batches:
            view(*x)
    finally:
        for h in hooks:
            h.remove()
    return gram


def column_importance(weight: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Per input column: ‖that column of the input over every token‖₂ · ‖that weight column‖₂.

    Example:
        >>> column_importance(torch.ones(2, 3), torch.diag(torch.tensor([4.0, 0.0, 1.0], dtype=torch.float64)))
        tensor([2.8284, 0.0000, 1.4142])
    """
    return gram.diagonal().clamp(min=0).sqrt().float() * weight.detach().float().norm(dim=0)


def refit(weight: torch.Tensor, gram: torch.Tensor, keep: list[int], ridge: float = 1e-3) -> torch.Tensor:
    """The weights on columns ``keep`` that best reproduce the full layer's output on the measured inputs.

    Least squares over the tokens the Gram matrix ``XᵀX`` was summed on: ``W' = argmin ‖X_K W'ᵀ − X Wᵀ‖²``
    (plus a small ridge, relative to the inputs' scale), i.e. ``W'ᵀ = (X_KᵀX_K + λI)⁻¹ X_KᵀX Wᵀ``. What a cut
    head or neuron used to write is partly taken over by the kept ones, so training starts nearer the teacher.

    Example:
        >>> w, x = torch.randn(4, 6), torch.randn(100, 6)
        >>> torch.allclose(refit(w, (x.T @ x).double(), list(range(6)), ridge=0.0), w, atol=1e-4)
        True
    """
    k = torch.tensor(keep, dtype=torch.long)
    g = gram.double()
    gkk = g.index_select(0, k).index_select(1, k)
    lam = ridge * float(gkk.diagonal().mean()) if len(keep) else 0.0
    rhs = g.index_select(0, k) @ weight.detach().double().T
    sol = torch.linalg.solve(gkk + lam * torch.eye(len(keep), dtype=torch.float64), rhs)
    return sol.T.to(weight.dtype).contiguous()


def _top(scores: torch.Tensor, k: int) -> list[int]:
    return sorted(int(i) for i in torch.topk(scores, k).indices)


@register_handler(TransformerPruneConfig)
class TransformerPruneHandler:
    """Layers, then heads and FFN neurons, by importance on train (else validation) rows."""

    def apply(self, model: nn.Module, cfg: TransformerPruneConfig, ctx: StepContext) -> StepOutput:
        if is_quantized(model):
            raise UserInputError("prune_transformer cannot cut an int8-converted model: put it before the quantization step")
        blocks = find_blocks(model) if isinstance(model, fx.GraphModule) else []
        if not blocks:
            raise UserInputError(
                f"prune_transformer finds no attention layers in {ctx.spec.name!r} (it reads them from the graph of an "
                "hf: transformer: scaled_dot_product_attention fed by Linear projections); for CNNs and MLPs use "
                "prune_structured")
        assert isinstance(model, fx.GraphModule)
        if cfg.layers > len(blocks) - 1:
            raise UserInputError(f"prune_transformer.layers={cfg.layers}: the model has {len(blocks)} layers and "
                                 f"at least one stays (the last); drop at most {len(blocks) - 1}")
        if cfg.heads and not all(b.heads_cuttable for b in blocks):
            raise UserInputError("prune_transformer.heads: this graph fixes the number of heads in the view that "
                                 "splits them, so heads cannot be cut; use layers or ffn")
        if cfg.ffn and not all(b.ffn_in for b in blocks):
            raise UserInputError("prune_transformer.ffn: not every layer has a Linear → activation → Linear FFN "
                                 "(gated FFNs are not cut yet); use layers or heads")
        rows, where = importance_rows(ctx, cfg.rows)
        params_before = count_params(model)
        meta: dict[str, Any] = {"importance_rows": int(rows[0].shape[0]), "importance_from": where,
                                "layers_before": len(blocks), "heads_per_layer_before": blocks[0].heads,
                                "ffn_per_layer_before": (model.get_submodule(blocks[0].ffn_in).out_features
                                                         if blocks[0].ffn_in else None)}
        dropped: list[int] = []
        if cfg.layers:
            view, trim, meta["importance_view"] = training_view(model, ctx)
            # 64 rows per trial: each trial is one forward pass of a copy, and the choice is between a few layers.
            dropped, meta["layer_trials"] = layer_drop_order(view, _batches(tuple(t[:64] for t in rows), 32, trim),
                                                             cfg.layers)
            drop_layers(model, dropped)
            ctx.log(f"prune_transformer: dropped layers {dropped}")
        meta["dropped_layers"] = dropped
        kept = find_blocks(model)
        meta["heads"], meta["ffn"] = {}, {}
        if cfg.heads or cfg.ffn:
            view, trim, meta["importance_view"] = training_view(model, ctx)
            names = [b.o for b in kept] * bool(cfg.heads) + [b.ffn_out for b in kept if b.ffn_out] * bool(cfg.ffn)
            grams = input_gram(view, names, _batches(rows, 32, trim))
            refitted: dict[str, torch.Tensor] = {}
            for b in kept:
                if cfg.heads:
                    w = model.get_submodule(b.o).weight
                    per_head = column_importance(w, grams[b.o]).reshape(b.heads, b.head_dim).sum(1)
                    keep = _top(per_head, max(1, round(b.heads * (1 - cfg.heads))))
                    if cfg.refit:
                        cols = [h * b.head_dim + j for h in keep for j in range(b.head_dim)]
                        refitted[b.o] = refit(w, grams[b.o], cols)
                    cut_heads(model, b, keep)
                    meta["heads"][b.q] = keep
                if cfg.ffn and b.ffn_in and b.ffn_out:
                    w = model.get_submodule(b.ffn_out).weight
                    width = model.get_submodule(b.ffn_in).out_features
                    k = max(cfg.multiple_of, round(width * (1 - cfg.ffn) / cfg.multiple_of) * cfg.multiple_of)
                    keep = _top(column_importance(w, grams[b.ffn_out]), min(k, width))
                    if cfg.refit:
                        refitted[b.ffn_out] = refit(w, grams[b.ffn_out], keep)
                    cut_ffn(model, b.ffn_in, b.ffn_out, keep)
                    meta["ffn"][b.ffn_in] = keep
            with torch.no_grad():
                for name, w in refitted.items():
                    model.get_submodule(name).weight.copy_(w)
            meta["refit"] = sorted(refitted)
        model.recompile()
        meta.update(params_before=params_before, params_after=count_params(model), layers_after=len(kept),
                    heads_per_layer_after=(len(next(iter(meta["heads"].values()))) if meta["heads"] else blocks[0].heads),
                    ffn_per_layer_after=(len(next(iter(meta["ffn"].values()))) if meta["ffn"] else
                                         meta["ffn_per_layer_before"]))
        ctx.log(f"prune_transformer: {meta['layers_before']}→{meta['layers_after']} layers, heads "
                f"{meta['heads_per_layer_before']}→{meta['heads_per_layer_after']}, FFN {meta['ffn_per_layer_before']}→"
                f"{meta['ffn_per_layer_after']}; params {params_before}→{meta['params_after']}")
        return StepOutput(model, meta)

    def rebuild(self, model: nn.Module, cfg: TransformerPruneConfig, meta: dict[str, Any], *, engine: str) -> nn.Module:
        assert isinstance(model, fx.GraphModule)
        if meta.get("dropped_layers"):
            drop_layers(model, meta["dropped_layers"])
        for b in find_blocks(model):
            if b.q in meta.get("heads", {}):
                cut_heads(model, b, meta["heads"][b.q])
            if b.ffn_in in meta.get("ffn", {}):
                cut_ffn(model, b.ffn_in, str(b.ffn_out), meta["ffn"][b.ffn_in])
        model.recompile()
        return model


__all__ = ["TransformerPruneHandler", "column_importance", "importance_rows", "input_gram", "layer_drop_order", "refit",
           "training_view"]

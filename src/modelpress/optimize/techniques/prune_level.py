"""``prune``: structured pruning at one level, in the form the model has (transformer or CNN/MLP).

The one knob a recipe's ``search`` turns. A graph with attention layers (an ``hf:`` transformer) is cut by
``prune_transformer``: ``shape="width"`` removes ``level`` of each layer's FFN neurons and ``level / 2`` of its
heads; ``shape="depth"`` drops ``round(level × (layers − 1))`` layers; ``shape="mixed"`` keeps ``1 − level`` of
the float model's time, dropping as many whole layers as that allows and cutting the FFNs for the rest
(``width_allocation.layers_then_ffn``). Any other model goes to ``prune_structured`` (Torch-Pruning) with
``amount=level``, whatever the shape but depth. The delegate's config and meta are recorded, and
``rebuild`` hands them back to the same delegate.

A width level is an amount of compute: ``width_allocation`` tries a few splits of it between heads and FFN
neurons and keeps the one closest to the float model on validation rows.

``level`` is always a fraction of the float model. A search prunes a student that an earlier level already cut
(``from_level``), so the step cuts only what remains: from 0.2 to 0.4 of the FFN neurons is a quarter of
what the 0.2 student still has.

Example:
    >>> from modelpress.optimize.recipes import PruneConfig
    >>> delegate_for(PruneConfig(level=0.5), layers=6).to_dict()["type"]
    'prune_transformer'
    >>> delegate_for(PruneConfig(level=0.5), layers=0).to_dict()
    {'type': 'prune_structured', 'amount': 0.5, 'importance': 'l2', 'global_ranking': False, 'ignore': []}
"""

from __future__ import annotations

from typing import Any

from torch import fx, nn

from modelpress.errors import ModelLoadError, UserInputError
from modelpress.optimize.recipes import PruneConfig, StepConfig, StructuredPruneConfig, TransformerPruneConfig, parse_step
from modelpress.optimize.techniques.registry import StepContext, StepOutput, handler_for, register_handler
from modelpress.optimize.techniques.transformer_graph import find_blocks
from modelpress.optimize.techniques.width_allocation import ALIGN, ALIGN_FROM, choose_width_cut, layers_then_ffn


def delegate_for(cfg: PruneConfig, *, layers: int, float_layers: int | None = None,
                 ffn: tuple[int, int] | None = None) -> StepConfig:
    """The concrete step ``cfg`` stands for on a model with ``layers`` attention layers (0: not a transformer),
    cut from a float model that had ``float_layers`` (default: ``layers``). ``ffn`` is (the float model's FFN
    width, the input's), for ``shape="mixed"``; None when the FFNs cannot be cut.

    Example:
        >>> delegate_for(PruneConfig(level=0.4, shape="depth", from_level=0.2), layers=5, float_layers=6).layers
        1
        >>> d = delegate_for(PruneConfig(level=0.4, shape="mixed", from_level=0.22), layers=5, float_layers=6,
        ...                  ffn=(1536, 1216))
        >>> d.layers, round(1216 * (1 - d.ffn))
        (1, 1024)
    """
    if layers and cfg.shape == "mixed":
        total = float_layers or layers
        if ffn is None:  # FFNs that cannot be cut (gated): the level in whole layers
            keep, kept, align = max(1, min(layers, round((1 - cfg.level) * total))), 0, 1
        else:
            align = ALIGN if ffn[0] >= ALIGN_FROM else 1
            keep, kept = layers_then_ffn(cfg.level, layers=total, ffn=ffn[0], layers_now=layers, ffn_now=ffn[1],
                                         align=align)
        cut = round(1 - kept / ffn[1], 6) if ffn is not None and kept < ffn[1] else 0.0
        if keep >= layers and not cut:
            raise UserInputError(f"prune level {cfg.level} (mixed) cuts nothing more of a model with {layers} layers "
                                 f"left of {total}; raise the level")
        return TransformerPruneConfig(layers=layers - keep, ffn=cut, multiple_of=align)
    if layers:
        if cfg.shape == "depth":
            total = float_layers or layers
            n = round(cfg.level * (total - 1)) - (total - layers)
            if n < 1:
                raise UserInputError(f"prune level {cfg.level} (depth) drops no more layers of {total} (the input "
                                     f"has {layers}); raise the level")
            return TransformerPruneConfig(layers=n)
        return TransformerPruneConfig(ffn=round(cfg.remaining_cut(), 6), heads=round(cfg.remaining_cut(0.5), 6))
    if cfg.shape == "depth":
        raise UserInputError("prune shape 'depth' drops transformer layers, and this model has no attention layers; "
                             "use shape 'width' (channels)")
    return StructuredPruneConfig(amount=round(cfg.remaining_cut(), 6))


def _ffn_widths(ref: nn.Module | None, model: fx.GraphModule) -> tuple[int, int] | None:
    """(the float model's FFN width, ``model``'s), or None when some layer's FFN cannot be cut."""
    widths = []
    for m in (ref, model):
        blocks = find_blocks(m) if isinstance(m, fx.GraphModule) else []
        if not blocks or not all(b.ffn_in for b in blocks):
            return None
        widths.append(int(m.get_submodule(str(blocks[0].ffn_in)).out_features))
    return widths[0], widths[1]


@register_handler(PruneConfig)
class PruneHandler:
    """Delegates to ``prune_transformer`` or ``prune_structured`` by what the model is."""

    def apply(self, model: nn.Module, cfg: PruneConfig, ctx: StepContext) -> StepOutput:
        layers = len(find_blocks(model)) if isinstance(model, fx.GraphModule) else 0
        ref = ctx.reference
        float_layers = len(find_blocks(ref)) if layers and isinstance(ref, fx.GraphModule) else None
        ffn = _ffn_widths(ref, model) if layers and cfg.shape == "mixed" else None
        inner = delegate_for(cfg, layers=layers, float_layers=float_layers, ffn=ffn)
        ctx.log(f"prune level {cfg.level} ({cfg.shape}): {inner.type} {inner.model_dump(mode='json')}")
        splits: list[dict[str, Any]] = []
        if layers and cfg.shape == "width" and isinstance(inner, TransformerPruneConfig):
            out, inner, splits = choose_width_cut(model, cfg.level, ctx, inner)  # type: ignore[arg-type]
        else:
            out = handler_for(inner).apply(model, inner, ctx)
        return StepOutput(out.model, {"level": cfg.level, "from_level": cfg.from_level, "shape": cfg.shape,
                                      "delegate": inner.to_dict(), "width_splits": splits,
                                      "delegate_meta": out.meta})

    def rebuild(self, model: nn.Module, cfg: PruneConfig, meta: dict[str, Any], *, engine: str) -> nn.Module:
        if "delegate" not in meta:
            raise ModelLoadError("the artifact's prune step has no recorded delegate; re-run the job")
        inner = parse_step(meta["delegate"], where="prune.delegate")
        return handler_for(inner).rebuild(model, inner, meta["delegate_meta"], engine=engine)


__all__ = ["PruneHandler", "delegate_for"]

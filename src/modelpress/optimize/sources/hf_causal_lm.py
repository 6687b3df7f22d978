"""An ``hf:`` causal LM (``*ForCausalLM``, ``*LMHeadModel``): its spec, over JSONL text packed into blocks.

The model is the transformers model itself, as loaded (``hf.HFSource``: safetensors only, attention ours, no
code). Its rows are the eval file's text laid end to end and cut into blocks (``lm.blocks``) of ``max_length``
tokens (the ref's, else the model's positions capped at 512). The blocks are split as every source's rows are
(``data.make_task_data``): validation blocks choose, calibration blocks (a ``calibration`` file's, else more
of the eval file's) feed the data-aware options, and perplexity is reported on the rest.

Training an LM is not offered yet (``spec.extra["no_training"]``); the recipe it takes is weight-only
quantization (``optimize.lm.job``).

Example:
    >>> loaded = load_causal_lm(ref, model, tokenizer, cfg, build=build)   # doctest: +SKIP
    >>> loaded.spec.metric, loaded.spec.extra["block"]                     # doctest: +SKIP
    ('perplexity', 512)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn

from modelpress.errors import DataError
from modelpress.optimize.lm.blocks import text_blocks
from modelpress.optimize.sources.base import LoadedModel
from modelpress.optimize.sources.common import tiled_input
from modelpress.optimize.sources.data import make_task_data
from modelpress.optimize.sources.ref import ModelRef
from modelpress.optimize.spec import ModelSpec

#: Longest default block: longer contexts cost memory (logits are ``block × vocab`` per row) and time.
DEFAULT_BLOCK_CAP = 512


def block_length(ref: ModelRef, tok: Any, cfg: Any) -> int:
    """Tokens per block: the ref's ``max_length``, else the model's positions capped at ``DEFAULT_BLOCK_CAP``.

    Example:
        >>> block_length(ref, tok, cfg)   # doctest: +SKIP
        512
    """
    from modelpress.optimize.limits import check_text_length, current_limits

    positions = None
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        if isinstance(getattr(cfg, name, None), int) and getattr(cfg, name) > 0:
            positions = int(getattr(cfg, name))
            break
    length = ref.max_length or min(DEFAULT_BLOCK_CAP, positions or DEFAULT_BLOCK_CAP,
                                   int(getattr(tok, "model_max_length", DEFAULT_BLOCK_CAP) or DEFAULT_BLOCK_CAP))
    try:
        check_text_length(length, current_limits(), positions=positions)
    except DataError as e:
        raise DataError(str(e) if str(e).startswith("max_length") else f"max_length: {e}") from None
    if length < 2:
        raise DataError("max_length: a causal LM's block needs at least 2 tokens")
    return length


#: Bytes of float32 logits one scoring batch may hold (``[rows, block, vocab]``): a 128k vocabulary at 512 tokens is
#: 256 MiB per row, so such a model is scored a row at a time rather than running the worker out of memory.
LOGITS_BATCH_BYTES = 256 * 1024**2


def eval_batch(block: int, vocab: int) -> int:
    """Blocks scored per batch: up to 8, fewer when their logits would pass ``LOGITS_BATCH_BYTES``.

    Example:
        >>> eval_batch(128, 1024), eval_batch(512, 128_256)
        (8, 1)
    """
    return max(1, min(8, LOGITS_BATCH_BYTES // max(1, block * vocab * 4)))


def load_causal_lm(ref: ModelRef, model: nn.Module, tok: Any, cfg: Any, *, build: Callable[[], nn.Module]
                   ) -> LoadedModel:
    """The causal LM and its spec: blocks of the ref's text files, metric ``perplexity``."""
    from modelpress.optimize.limits import check_text_tokens, current_limits

    assert ref.data
    if ref.metric is not None:
        raise DataError(f"metric {ref.metric!r}: a causal LM is judged by perplexity (and next-token agreement "
                        "with the float model, reported beside it); leave metric out")
    if ref.data.train:
        raise DataError("data.train: training a causal LM is not offered yet; its recipes are int8-weight-only "
                        "and int4-weight-only, which need eval (and optionally calibration) text only")
    block = block_length(ref, tok, cfg)

    def read(path: str) -> tuple[Any, Any]:
        ids, mask = text_blocks(tok, path, block=block)
        check_text_tokens(int(ids.shape[0]), block, Path(path).name, current_limits())
        return ids, mask

    x = read(ref.data.eval)
    calib = ((read(ref.data.calibration)), None) if ref.data.calibration else None
    td = make_task_data(x, None, calib, what=f"{Path(ref.data.eval).name} ({block}-token blocks)")
    arch = type(model).__name__
    spec = ModelSpec(
        name=ref.display_name, version=1, build=build, data=lambda: td, metric="perplexity",
        make_input=tiled_input(td.eval_inputs), latency_batches=ref.latency_batches,
        description=f"transformers {arch} (causal LM), {block}-token blocks; {td.description}",
        extra={"source": "hf", "task": "causal-lm", "block": block, "input_names": ["input_ids", "attention_mask"],
               "eval_batch_size": eval_batch(block, int(getattr(cfg, "vocab_size", 0) or 0)),
               "vocab_size": int(getattr(cfg, "vocab_size", 0) or 0),
               "no_training": "is not offered for causal LMs yet (their recipes are int8-weight-only and "
                              "int4-weight-only)"},
    )
    return LoadedModel(model, spec)


__all__ = ["DEFAULT_BLOCK_CAP", "LOGITS_BATCH_BYTES", "block_length", "eval_batch", "load_causal_lm"]

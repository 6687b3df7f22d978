"""A causal LM's rows: JSONL text tokenized and packed into fixed-length blocks.

Perplexity is measured as language-model evaluations measure it (transformers' "perplexity of fixed-length
models"): every row's tokens, each row started with the tokenizer's BOS token when it has one and ended with
its EOS token, are laid end to end and cut into non-overlapping blocks of ``block`` tokens; the last, short
block is right-padded (``attention_mask`` 0). Each block is scored on predicting its tokens 2..n from the ones
before, so every real token but a block's first is predicted exactly once, at the same positions before and
after compression.

Rows are plain ``{"text": ...}`` lines (``sources.data.read_jsonl``: size-capped, UTF-8, no labels for an LM).

Example:
    >>> ids, mask = pack_blocks([[1, 5, 6, 2], [1, 7, 2]], block=3, pad_id=0)
    >>> ids.tolist(), mask.tolist()
    ([[1, 5, 6], [2, 1, 7], [2, 0, 0]], [[1, 1, 1], [1, 1, 1], [1, 0, 0]])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from modelpress.errors import DataError

#: Most blocks read from one file: a file is refused past this, rather than held whole in memory.
MAX_BLOCKS = 100_000


def pack_blocks(rows: Sequence[Sequence[int]], *, block: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows laid end to end and cut into ``block``-token rows: ``(input_ids, attention_mask)``."""
    if block < 2:
        raise ValueError("a block needs at least 2 tokens (one predicted from another)")
    flat = [t for r in rows for t in r]
    n = -(-len(flat) // block)
    if n > MAX_BLOCKS:
        raise DataError(f"the text makes {n} blocks of {block} tokens, more than {MAX_BLOCKS}; give fewer rows")
    ids = torch.full((n * block,), pad_id, dtype=torch.long)
    ids[: len(flat)] = torch.tensor(flat, dtype=torch.long)
    mask = torch.zeros(n * block, dtype=torch.long)
    mask[: len(flat)] = 1
    return ids.view(n, block), mask.view(n, block)


def text_blocks(tok: Any, path: str | Path, *, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A JSONL text file's blocks for ``tok`` (a transformers tokenizer), as ``pack_blocks`` lays them.

    Example:
        >>> ids, mask = text_blocks(tokenizer, "eval.jsonl", block=128)   # doctest: +SKIP
    """
    from modelpress.optimize.sources.data import read_jsonl

    texts, pairs, labels = read_jsonl(path)
    name = Path(path).name
    if pairs is not None or labels is not None:
        raise DataError(f"{name}: a causal LM is judged on its own text; rows take 'text' only (no 'text_pair', "
                        "no 'label')")
    bos, eos = getattr(tok, "bos_token_id", None), getattr(tok, "eos_token_id", None)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else 0)
    rows: list[list[int]] = []
    for i in range(0, len(texts), 1024):
        enc = tok(texts[i:i + 1024], add_special_tokens=False)["input_ids"]
        # BOS/EOS around each row: the model sees where one text ends and the next begins, as it was trained.
        rows += [([bos] if bos is not None else []) + list(r) + ([eos] if eos is not None else []) for r in enc]
    ids, mask = pack_blocks(rows, block=block, pad_id=int(pad))
    if int(mask.sum()) < 2:
        raise DataError(f"{name}: the text has fewer than 2 tokens; a causal LM needs text to predict")
    return ids, mask


__all__ = ["MAX_BLOCKS", "pack_blocks", "text_blocks"]

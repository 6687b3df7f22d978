"""Perplexity and next-token agreement of a causal LM, from one pass over the blocks (``lm.blocks``).

A ``[rows, tokens, vocab]`` logits tensor is far too large to keep for every row (300 blocks of 128 tokens of a
32k vocabulary are 4.9 GB), so each batch's logits are *reduced* at once (``reduce_batch``) to what the two
metrics need: per predicted position, the log-probability of the real next token and the top-1 id. Both are
compared at the same positions before and after compression.

- ``perplexity``: ``exp`` of the mean negative log-likelihood of every predicted real token (lower is better);
- ``next_token_agreement``: the share of predicted positions whose top-1 next token equals the float model's.

Example:
    >>> import torch
    >>> ids, mask = torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.long)
    >>> r = reduce_batch(torch.zeros(1, 3, 4), ids, mask)
    >>> round(perplexity(r), 3), next_token_agreement(r, r)
    (4.0, 1.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class LMScores:
    """Per predicted position (``[rows, tokens - 1]``): the real next token's log-prob, the top-1 id, and
    which positions count (the next token is real)."""

    logprob: torch.Tensor
    top1: torch.Tensor
    counted: torch.Tensor

    @property
    def tokens(self) -> int:
        return int(self.counted.sum())


def reduce_batch(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> LMScores:
    """One batch's logits reduced to the scores of its predicted positions (position t predicts token t+1)."""
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = input_ids[:, 1:]
    logprob = lp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    counted = (attention_mask[:, 1:] > 0) & (attention_mask[:, :-1] > 0)
    return LMScores(logprob.masked_fill(~counted, 0.0).double(), lp.argmax(-1), counted)


def score_blocks(runner: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, batch_size: int = 8
                 ) -> LMScores:
    """Scores of every block through ``runner.logits`` (an ``lm.runner.LMRunner``), a batch at a time.

    Example:
        >>> s = score_blocks(TorchLM(model), ids, mask)   # doctest: +SKIP
    """
    parts = []
    with torch.inference_mode():
        for i in range(0, int(input_ids.shape[0]), batch_size):
            ids, mask = input_ids[i:i + batch_size], attention_mask[i:i + batch_size]
            parts.append(reduce_batch(runner.logits(ids, mask), ids, mask))
    return LMScores(torch.cat([p.logprob for p in parts]), torch.cat([p.top1 for p in parts]),
                    torch.cat([p.counted for p in parts]))


def perplexity(s: LMScores) -> float:
    """``exp`` of the mean negative log-likelihood over the counted positions."""
    if s.tokens == 0:
        raise ValueError("perplexity needs at least one predicted token")
    return math.exp(-float(s.logprob[s.counted].sum()) / s.tokens)


def next_token_agreement(s: LMScores, reference: LMScores) -> float:
    """Share of counted positions whose top-1 next token is the reference's (the float model's)."""
    if s.top1.shape != reference.top1.shape or not torch.equal(s.counted, reference.counted):
        raise ValueError("next-token agreement compares the same blocks before and after")
    if s.tokens == 0:
        raise ValueError("next-token agreement needs at least one predicted token")
    return float((s.top1 == reference.top1)[s.counted].float().mean())


__all__ = ["LMScores", "next_token_agreement", "perplexity", "reduce_batch", "score_blocks"]

"""The one interface every runtime's causal-LM adapter gives (torch, OpenVINO, ...): ``LMRunner``.

Perplexity, next-token agreement, prefill latency and decode speed are computed from these calls only
(``lm.metrics``, ``lm.timing``), so that no number depends on which runtime served it.

- ``logits(input_ids, attention_mask)``: one forward pass over whole rows, no cache: ``[rows, tokens, vocab]``
  float32 logits. Rows are left-aligned and right-padded (``attention_mask`` 0 on padding).
- ``prefill(input_ids, attention_mask)``: the prompt's forward pass, keeping its KV cache in the returned
  ``state``; returns ``(next_ids [rows], state)``, the greedy next token of each row.
- ``step(next_ids, state)``: one decode step with the KV cache: feeds ``next_ids`` ``[rows]``, returns the next
  greedy ids ``[rows]`` and the grown state. A state is used once (the call may reuse its buffers).

Prompts given to ``prefill`` are unpadded (every row the same length): decode speed is timed at a stated
prompt length, never on padding.

Example:
    >>> run = load_runner(path)                                    # doctest: +SKIP
    >>> nxt, st = run.prefill(ids, torch.ones_like(ids))           # doctest: +SKIP
    >>> nxt, st = run.step(nxt, st)                                # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class LMRunner(Protocol):
    """A causal LM served by one runtime (see the module docstring for each call's contract)."""

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ...

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
        ...

    def step(self, next_ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        ...


__all__ = ["LMRunner"]

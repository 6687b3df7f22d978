"""``TorchLM``: the ``LMRunner`` of a transformers causal LM run by torch, float or weight-only quantized.

``logits`` is one forward over right-padded rows without a cache; ``prefill`` runs the prompt with a
transformers ``DynamicCache`` and keeps it in the state; ``step`` feeds one token per row against that
cache and grows the attention mask by one column. Greedy everywhere: the next id is the argmax of the
last position. Every call runs under ``torch.inference_mode()``.

Example:
    >>> run = TorchLM(model)                                              # doctest: +SKIP
    >>> nxt, st = run.prefill(ids, torch.ones_like(ids))                  # doctest: +SKIP
    >>> nxt, st = run.step(nxt, st)                                       # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class TorchLMState:
    """What ``step`` needs: the KV cache (grown in place by each call) and the mask over all tokens so far."""

    cache: Any
    attention_mask: torch.Tensor


class TorchLM:
    """A transformers causal LM (``AutoModelForCausalLM`` or a ``quantize_lm`` copy) as an ``LMRunner``.

    Example:
        >>> from transformers import LlamaConfig, AutoModelForCausalLM          # doctest: +SKIP
        >>> run = TorchLM(AutoModelForCausalLM.from_config(LlamaConfig(...)))     # doctest: +SKIP
        >>> run.logits(ids, mask).shape                                           # doctest: +SKIP
        torch.Size([2, 8, 256])
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            params = {}
        # Prefill and step need only the last position's logits: asking for just it skips a
        # [rows, prompt, vocab] projection, the largest matmul of a small model's prompt.
        self._keep_last = "logits_to_keep" in params
        # transformers 5.25 renamed the cache argument and output `past_key_values` -> `cache` (the old name
        # warns until 5.40 removes it); take whichever this model's forward has.
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def _device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        if p is None:
            p = next(self.model.buffers())
        return p.device

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[rows, tokens, vocab]`` float32 logits of right-padded rows, no cache.

        Example:
            >>> TorchLM(model).logits(ids, torch.ones_like(ids)).dtype             # doctest: +SKIP
            torch.float32
        """
        dev = self._device()
        with torch.inference_mode():
            out = self.model(input_ids=input_ids.to(dev, torch.long), attention_mask=attention_mask.to(dev, torch.long),
                             use_cache=False)
            return out.logits.to(torch.float32)

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, TorchLMState]:
        """Run the (unpadded) prompt, keep its KV cache; return each row's greedy next id ``[rows]`` and the state.

        Example:
            >>> nxt, st = TorchLM(model).prefill(ids, torch.ones_like(ids))       # doctest: +SKIP
        """
        from modelpress.optimize.hf_env import prepare_transformers

        prepare_transformers()
        from transformers import DynamicCache

        dev = self._device()
        ids = input_ids.to(dev, torch.long)
        mask = attention_mask.to(dev, torch.long)
        extra = {"logits_to_keep": 1} if self._keep_last else {}
        with torch.inference_mode():
            cache = DynamicCache(config=self.model.config)
            extra[self._cache_arg] = cache
            out = self.model(input_ids=ids, attention_mask=mask, use_cache=True, **extra)
            nxt = out.logits[:, -1, :].argmax(dim=-1)
        return nxt, TorchLMState(_returned_cache(out, cache), mask)

    def step(self, next_ids: torch.Tensor, state: TorchLMState) -> tuple[torch.Tensor, TorchLMState]:
        """Feed one token per row with the cache; return the next greedy ids ``[rows]`` and the grown state.

        Example:
            >>> nxt, st = run.step(nxt, st)                                       # doctest: +SKIP
        """
        ids = next_ids.to(state.attention_mask.device, torch.long).reshape(-1, 1)
        if ids.shape[0] != state.attention_mask.shape[0]:
            raise ValueError(f"step got {ids.shape[0]} ids for a state of {state.attention_mask.shape[0]} rows")
        mask = torch.cat([state.attention_mask, torch.ones_like(ids)], dim=1)
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, use_cache=True, **{self._cache_arg: state.cache})
            nxt = out.logits[:, -1, :].argmax(dim=-1)
        return nxt, TorchLMState(_returned_cache(out, state.cache), mask)


def _returned_cache(out: Any, given: Any) -> Any:
    """The cache the forward returned (``cache`` in transformers >= 5.25, ``past_key_values`` before); a
    DynamicCache grows in place, so the one given is the fallback."""
    for name in ("cache", "past_key_values"):
        found = getattr(out, name, None)
        if found is not None:
            return found
    return given


__all__ = ["TorchLM", "TorchLMState"]

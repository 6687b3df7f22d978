"""How fast a causal LM serves: prefill milliseconds at a stated prompt length, and decode tokens/s with the KV cache.

Both are timed through the ``LMRunner`` calls only, so every runtime is timed the same way:

- **prefill**: one ``prefill(prompt)`` call on ``batch`` unpadded prompts of ``prompt_tokens`` tokens (it
  computes the whole prompt's KV cache and the first new token);
- **decode**: after an untimed prefill, ``new_tokens`` successive ``step`` calls, each one new token per row
  with the cache; tokens/s = ``batch × new_tokens / seconds`` of those steps.

As for every other model (``measure.interleaved_latency``), several runners are timed in alternating rounds,
the order rotating each round, so a drift of the host lands on all of them; warm-up calls come first in each
round. Prompts are token ids drawn from the caller's own rows (real text, never random ids, which a model
with a small vocabulary may treat differently).

Example:
    >>> out = lm_latency({"float": TorchLM(model)}, prompt, new_tokens=32)   # doctest: +SKIP
    >>> out["float"]["decode_tokens_per_s"]                                  # doctest: +SKIP
    412.7
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from modelpress.optimize.measure import torch_threads


def prompt_from(input_ids: torch.Tensor, attention_mask: torch.Tensor, *, batch: int, tokens: int) -> torch.Tensor:
    """``batch`` prompts of ``tokens`` real tokens, cut from the starts of full blocks.

    Example:
        >>> prompt_from(torch.arange(12).view(3, 4), torch.ones(3, 4, dtype=torch.long), batch=2, tokens=3).tolist()
        [[0, 1, 2], [4, 5, 6]]
    """
    full = (attention_mask[:, :tokens].sum(1) == tokens).nonzero().flatten()
    if tokens > input_ids.shape[1] or len(full) == 0:
        raise ValueError(f"no row has {tokens} real tokens to make a prompt of")
    rows = full[torch.arange(batch) % len(full)]
    return input_ids[rows, :tokens].clone()


def _one(runner: Any, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    mask = torch.ones_like(prompt)
    t0 = time.perf_counter_ns()
    nxt, state = runner.prefill(prompt, mask)
    t1 = time.perf_counter_ns()
    t2 = time.perf_counter_ns()
    for _ in range(new_tokens):
        nxt, state = runner.step(nxt, state)
    t3 = time.perf_counter_ns()
    return (t1 - t0) / 1e6, (t3 - t2) / 1e6


def lm_latency(runners: dict[str, Any], prompt: torch.Tensor, *, new_tokens: int = 32, rounds: int = 5,
               runs: int = 3, warmup: int = 1, threads: int = 1) -> dict[str, dict[str, Any]]:
    """Prefill ms and decode tokens/s of each runner on ``prompt`` (``[batch, tokens]``), interleaved.

    Each round runs every runner ``warmup`` untimed then ``runs`` timed generations (prefill, then
    ``new_tokens`` steps); per runner: median and p90 of prefill ms and of ms per decode step, and the decode
    tokens/s of the median step, with the shape, threads and counts that produced them.
    """
    if runs * rounds < 3:
        raise ValueError("lm_latency needs at least 3 timed generations per runner")
    names = list(runners)
    prefill: dict[str, list[float]] = {n: [] for n in names}
    step: dict[str, list[float]] = {n: [] for n in names}
    with torch_threads(threads), torch.inference_mode():
        for r in range(rounds):
            for n in names[r % len(names):] + names[:r % len(names)]:
                for _ in range(warmup):
                    _one(runners[n], prompt, new_tokens)
                for _ in range(runs):
                    p, d = _one(runners[n], prompt, new_tokens)
                    prefill[n].append(p)
                    step[n].append(d / new_tokens)
    batch, tokens = int(prompt.shape[0]), int(prompt.shape[1])
    out: dict[str, dict[str, Any]] = {}
    for n in names:
        ps, ss = sorted(prefill[n]), sorted(step[n])
        out[n] = {"prefill_median_ms": statistics.median(ps), "prefill_p90_ms": _p90(ps),
                  "decode_step_median_ms": statistics.median(ss), "decode_step_p90_ms": _p90(ss),
                  "decode_tokens_per_s": batch * 1000.0 / statistics.median(ss),
                  "batch_size": batch, "prompt_tokens": tokens, "new_tokens": new_tokens,
                  "runs": len(ps), "rounds": rounds, "warmup_per_round": warmup, "threads": threads,
                  "interleaved": len(names) > 1}
    return out


def _p90(s: list[float]) -> float:
    k = (len(s) - 1) * 0.9
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


__all__ = ["lm_latency", "prompt_from"]

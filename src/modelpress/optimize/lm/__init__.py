"""Causal language models (issue 23 items 1 and 3): weight-only quantization, perplexity, prefill and decode speed.

A causal LM is judged and timed differently from the models the rest of ``optimize`` handles: its outputs
(``[rows, tokens, vocab]`` logits) are reduced per batch to next-token log-probabilities and top-1 ids
(``lm.metrics``), and its latency is a prefill at a stated length plus decode tokens/s with the KV cache
(``lm.timing``). Each runtime serves it through one small adapter behind ``lm.runner.LMRunner``.
"""

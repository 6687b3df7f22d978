"""Blocks of text, perplexity, next-token agreement and LM timing (``optimize.lm.blocks/metrics/timing``)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from modelpress.errors import DataError
from modelpress.optimize.lm.blocks import pack_blocks, text_blocks
from modelpress.optimize.lm.metrics import next_token_agreement, perplexity, reduce_batch, score_blocks
from modelpress.optimize.lm.timing import lm_latency, prompt_from


class CharTokenizer:
    """Just what ``text_blocks`` calls of a transformers tokenizer: one id per character."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[3 + (ord(c) % 50) for c in t] for t in texts]}


class BigramRunner:
    """A causal LM whose logits at each position are a fixed table row of the current token (a bigram model)."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table

    def logits(self, input_ids, attention_mask):
        return self.table[input_ids]

    def prefill(self, input_ids, attention_mask):
        return self.table[input_ids[:, -1]].argmax(-1), input_ids.shape[1]

    def step(self, next_ids, state):
        return self.table[next_ids].argmax(-1), state + 1


def test_every_row_is_framed_by_bos_and_eos_and_only_the_last_block_is_padded(tmp_path):
    f = tmp_path / "eval.jsonl"
    f.write_text("\n".join(json.dumps({"text": t}) for t in ["abc", "de"]) + "\n")
    ids, mask = text_blocks(CharTokenizer(), f, block=4)
    flat = ids[mask > 0].tolist()
    assert flat[0] == 1 and flat[4] == 2 and flat[5] == 1 and flat[-1] == 2 and len(flat) == 9
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_rows_with_labels_are_refused_for_a_causal_lm(tmp_path):
    f = tmp_path / "eval.jsonl"
    f.write_text(json.dumps({"text": "abc", "label": 1}) + "\n")
    with pytest.raises(DataError, match="text' only"):
        text_blocks(CharTokenizer(), f, block=4)


def test_a_block_shorter_than_two_tokens_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        pack_blocks([[1, 2]], block=1, pad_id=0)


def test_perplexity_of_uniform_logits_is_the_vocabulary_size_and_padding_is_not_counted():
    ids, mask = pack_blocks([[1, 5, 6, 2, 1, 7]], block=4, pad_id=0)
    s = reduce_batch(torch.zeros(2, 4, 10), ids, mask)
    assert s.tokens == 4  # 3 predicted in the first block, 1 in the second (padding predicts nothing)
    assert perplexity(s) == pytest.approx(10.0)


def test_perplexity_is_lower_for_a_model_that_predicts_the_text():
    ids, mask = pack_blocks([[1, 2, 3, 1, 2, 3, 1, 2, 3]], block=9, pad_id=0)
    good = torch.full((10, 10), -5.0)
    for a, b in ((1, 2), (2, 3), (3, 1)):
        good[a, b] = 5.0
    sharp = score_blocks(BigramRunner(good), ids, mask)
    flat = score_blocks(BigramRunner(torch.zeros(10, 10)), ids, mask)
    assert perplexity(sharp) < 1.01 < perplexity(flat) == pytest.approx(10.0)
    assert math.isclose(next_token_agreement(sharp, sharp), 1.0)
    assert next_token_agreement(flat, sharp) < 0.5


def test_agreement_refuses_scores_of_other_blocks():
    a = reduce_batch(torch.zeros(1, 4, 5), torch.ones(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long))
    b = reduce_batch(torch.zeros(1, 3, 5), torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="same blocks"):
        next_token_agreement(a, b)


def test_prompts_are_cut_from_rows_with_enough_real_tokens():
    ids = torch.arange(12).view(3, 4)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]])
    assert prompt_from(ids, mask, batch=2, tokens=3).tolist() == [[4, 5, 6], [8, 9, 10]]
    with pytest.raises(ValueError):
        prompt_from(ids, torch.zeros_like(mask), batch=1, tokens=3)


def test_lm_latency_times_each_runner_interleaved_and_records_how():
    runners = {"a": BigramRunner(torch.randn(10, 10)), "b": BigramRunner(torch.randn(10, 10))}
    out = lm_latency(runners, torch.tensor([[1, 2, 3]]), new_tokens=4, rounds=2, runs=2, warmup=1)
    for r in out.values():
        assert r["runs"] == 4 and r["new_tokens"] == 4 and r["prompt_tokens"] == 3 and r["interleaved"]
        assert r["prefill_p90_ms"] >= r["prefill_median_ms"] > 0
        assert r["decode_tokens_per_s"] == pytest.approx(1000.0 / r["decode_step_median_ms"])

"""``TorchLM``: the torch ``LMRunner`` (logits without cache, prefill + step with a DynamicCache)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelpress.optimize.lm.runner import LMRunner
from modelpress.optimize.lm.torch_lm import TorchLM
from modelpress.optimize.lm.weight_only import quantize_lm
from tests.optimize.lm.tiny_lms import prompt, tiny_gpt2, tiny_llama


@pytest.fixture(scope="module")
def llama() -> nn.Module:
    return tiny_llama()


def greedy_without_cache(run: TorchLM, ids: torch.Tensor, steps: int) -> torch.Tensor:
    out = []
    for _ in range(steps):
        nxt = run.logits(ids, torch.ones_like(ids))[:, -1].argmax(-1)
        out.append(nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    return torch.stack(out, dim=1)


def greedy_with_cache(run: TorchLM, ids: torch.Tensor, steps: int) -> torch.Tensor:
    nxt, state = run.prefill(ids, torch.ones_like(ids))
    out = [nxt]
    for _ in range(steps - 1):
        nxt, state = run.step(nxt, state)
        out.append(nxt)
    return torch.stack(out, dim=1)


def test_torch_lm_is_an_lm_runner(llama):
    assert isinstance(TorchLM(llama), LMRunner)


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_greedy_decode_with_the_kv_cache_equals_a_greedy_loop_without_cache(build):
    run = TorchLM(build())
    ids = prompt()
    assert torch.equal(greedy_with_cache(run, ids, 12), greedy_without_cache(run, ids, 12))


def test_logits_are_float32_and_right_padding_does_not_change_the_real_positions(llama):
    run = TorchLM(llama)
    ids = prompt(rows=2, length=9)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    padded = ids.clone()
    padded[1, 6:] = 0
    out = run.logits(padded, mask)
    assert out.shape == (2, 9, 256) and out.dtype == torch.float32
    alone = run.logits(ids[1:, :6], torch.ones_like(ids[1:, :6]))
    torch.testing.assert_close(out[1:, :6], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:1], run.logits(ids[:1], torch.ones_like(ids[:1])), atol=1e-5, rtol=1e-5)


def test_prefill_and_step_track_the_mask_and_refuse_a_wrong_row_count(llama):
    run = TorchLM(llama)
    ids = prompt(rows=2, length=5)
    nxt, state = run.prefill(ids, torch.ones_like(ids))
    assert nxt.shape == (2,) and nxt.dtype == torch.long
    nxt, state = run.step(nxt, state)
    assert state.attention_mask.shape == (2, 6) and state.cache.get_seq_length() == 6
    with pytest.raises(ValueError, match="rows"):
        run.step(torch.zeros(3, dtype=torch.long), state)


def test_a_weight_only_int4_model_decodes_with_the_cache_like_its_own_no_cache_loop(llama):
    qm, _ = quantize_lm(llama, bits=4, group_size=32)
    run = TorchLM(qm)
    ids = prompt(rows=4, length=8, seed=9)
    cached, plain = greedy_with_cache(run, ids, 8), greedy_without_cache(run, ids, 8)
    # bf16 activations round a little differently with and without the cache: most ids, not all, must match.
    assert float((cached == plain).float().mean()) >= 0.8

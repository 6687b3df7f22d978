"""The tiny random causal LMs the ``optimize.lm`` tests build: a Llama (grouped-query attention) and a GPT-2
(``Conv1D`` layers, tied embeddings), both with a 256-token vocabulary."""

from __future__ import annotations

import torch
from torch import nn

from modelpress.optimize.hf_env import prepare_transformers

VOCAB = 256


def tiny_llama(seed: int = 0) -> nn.Module:
    prepare_transformers()
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128)
    return AutoModelForCausalLM.from_config(cfg).eval()


def tiny_gpt2(seed: int = 0, *, special_id: int = 0) -> nn.Module:
    prepare_transformers()
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=special_id,
                     eos_token_id=special_id)
    return AutoModelForCausalLM.from_config(cfg).eval()


def prompt(rows: int = 3, length: int = 10, seed: int = 5) -> torch.Tensor:
    return torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))

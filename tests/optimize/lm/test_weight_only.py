"""Weight-only int8/int4 quantization of causal LMs (``lm.weight_only``): error bounds, kernels, files."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from modelpress.errors import ModelLoadError
from modelpress.optimize.hf_env import prepare_transformers
from modelpress.optimize.lm.torch_lm import TorchLM
from modelpress.optimize.lm.weight_only import (
    METADATA_KEY,
    QuantizedEmbedding,
    WeightOnlyLinear,
    load_quantized,
    quantize_lm,
    quantize_weight,
    read_quantized_meta,
    save_quantized,
)
from tests.optimize.lm.tiny_lms import tiny_gpt2, tiny_llama

prepare_transformers()
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402


@pytest.fixture(scope="module")
def llama() -> nn.Module:
    return tiny_llama()


@pytest.fixture(scope="module")
def prompts() -> torch.Tensor:
    return torch.randint(0, 256, (32, 32), generator=torch.Generator().manual_seed(123))


def top1_agreement(a: nn.Module, b: nn.Module, ids: torch.Tensor) -> float:
    mask = torch.ones_like(ids)
    la, lb = TorchLM(a).logits(ids, mask), TorchLM(b).logits(ids, mask)
    return float((la.argmax(-1) == lb.argmax(-1)).float().mean())


def test_int8_error_is_at_most_half_a_step_and_far_below_int4_error():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    errors = {}
    for bits in (8, 4):
        for group in (32, 128, None):
            qw = quantize_weight(w, bits=bits, group_size=group)
            g = qw.group_size
            err = (qw.dequantize() - w).abs()
            step = qw.scale.float().repeat_interleave(g, dim=1)
            # No value is clamped: every element lies within half a step of its code.
            assert bool((err <= step / 2 * (1 + 1e-3) + 1e-7).all()), (bits, group)
            errors[bits, group] = float(err.max())
    for group in (32, 128, None):
        assert errors[8, group] < errors[4, group] / 8
    assert errors[4, 32] < errors[4, None]  # smaller groups, smaller error


def test_symmetric_quantization_has_zero_points_at_zero_and_codes_within_half_a_step():
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(4)) + 0.3  # skewed rows
    sym = quantize_weight(w, bits=8, group_size=None, symmetric=True)
    asym = quantize_weight(w, bits=8, group_size=None)
    assert not bool(sym.zero.float().any())
    assert int(sym.codes().min()) >= 1  # -127..127: the int8 kernel's symmetric range
    err = (sym.dequantize() - w).abs()
    assert bool((err <= sym.scale.float() / 2 * (1 + 1e-3)).all())
    assert float(err.max()) > float((asym.dequantize() - w).abs().max())  # skewed rows cost a symmetric grid


def test_constant_rows_and_zero_weights_quantize_exactly_enough_and_without_nan():
    w = torch.zeros(16, 64)
    w[1] = 0.5
    w[2, :32] = -3.0
    for bits in (4, 8):
        deq = quantize_weight(w, bits=bits, group_size=32).dequantize()
        assert bool(torch.isfinite(deq).all())
        assert float((deq - w).abs().max()) < 1e-2
    with pytest.raises(ValueError, match="does not divide"):
        quantize_weight(torch.randn(4, 48), bits=4, group_size=32)
    with pytest.raises(ValueError, match="NaN"):
        quantize_weight(torch.full((4, 32), float("nan")), bits=8, group_size=None)


@torch.no_grad()
def test_int4_kernel_output_matches_dequantize_then_matmul():
    torch.manual_seed(1)
    lin = nn.Linear(256, 704)
    x = torch.randn(5, 256)
    for group in (32, 64, 128):
        exact = WeightOnlyLinear.from_linear(lin, bits=4, group_size=group, compute_dtype=torch.float32,
                                             backend="kernel")
        assert exact.uses_kernel
        want = x @ exact.quantized_weight().dequantize().T + lin.bias
        # In float32 the kernel decodes exactly what dequantize() decodes.
        torch.testing.assert_close(exact(x), want, atol=1e-4, rtol=1e-4)
        fast = WeightOnlyLinear.from_linear(lin, bits=4, group_size=group)  # bf16 activations, the default
        assert fast.uses_kernel
        err = (fast(x) - want).abs().max() / want.abs().max()
        assert float(err) < 2e-2


@torch.no_grad()
def test_int4_kernel_takes_a_layer_whose_outputs_are_not_a_multiple_of_16():
    torch.manual_seed(3)
    lin = nn.Linear(64, 50)  # the packer wants rows in blocks of 16: padded, then cut off
    q = WeightOnlyLinear.from_linear(lin, bits=4, group_size=32, compute_dtype=torch.float32, backend="kernel")
    x = torch.randn(4, 64)
    torch.testing.assert_close(q(x), x @ q.quantized_weight().dequantize().T + lin.bias, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_the_bf16_int8_kernel_is_never_given_inputs_that_are_not_a_multiple_of_16():
    # torch 2.13's bf16 _weight_int8pack_mm segfaults (kills the worker, no exception) for such a K.
    lin = nn.Linear(72, 32)
    q = WeightOnlyLinear.from_linear(lin, bits=8, group_size=None)
    assert not q.kernel_applies and not q.uses_kernel
    x = torch.randn(2, 72)
    assert float((q(x) - lin(x)).abs().max()) < 0.05
    with pytest.raises(ValueError, match="does not take"):
        WeightOnlyLinear.from_linear(lin, bits=8, group_size=None, backend="kernel")
    assert WeightOnlyLinear.from_linear(lin, bits=8, group_size=None, compute_dtype=torch.float32).kernel_applies


@torch.no_grad()
def test_int8_per_channel_kernel_adds_the_zero_point_back():
    torch.manual_seed(2)
    # Rows that are far from symmetric: a symmetric kernel without the zero term would be badly off.
    lin = nn.Linear(704, 256)
    with torch.no_grad():
        lin.weight.add_(torch.linspace(-0.5, 0.5, 256).unsqueeze(1))
    x = torch.randn(3, 704)
    exact = WeightOnlyLinear.from_linear(lin, bits=8, group_size=None, compute_dtype=torch.float32, backend="kernel")
    want = x @ exact.quantized_weight().dequantize().T + lin.bias
    torch.testing.assert_close(exact(x), want, atol=1e-3, rtol=1e-4)
    fast = WeightOnlyLinear.from_linear(lin, bits=8, group_size=None)
    assert fast.uses_kernel
    assert float((fast(x) - want).abs().max() / want.abs().max()) < 2e-2
    grouped = WeightOnlyLinear.from_linear(lin, bits=8, group_size=64)  # no kernel for int8 groups
    assert not grouped.uses_kernel
    assert float((grouped(x) - lin(x)).abs().max() / lin(x).abs().max()) < 2e-2


def test_saved_state_is_plain_nibbles_and_scales_not_the_kernels_packed_layout():
    lin = nn.Linear(64, 32, bias=False)
    q = WeightOnlyLinear.from_linear(lin, bits=4, group_size=32)
    q(torch.randn(1, 64))  # the packed copy exists now
    state = q.state_dict()
    assert set(state) == {"qweight", "scale", "zero"}
    assert state["qweight"].dtype == torch.uint8 and state["qweight"].shape == (32, 32)
    codes = q.quantized_weight().codes()
    assert torch.equal(state["qweight"], (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8))
    assert state["scale"].dtype == torch.bfloat16 and state["scale"].shape == (32, 2)


def test_quantize_lm_returns_a_copy_and_leaves_its_input_untouched(llama):
    before = {k: v.clone() for k, v in llama.state_dict().items()}
    kinds = {n: type(m) for n, m in llama.named_modules()}
    qm, meta = quantize_lm(llama, bits=4, group_size=32)
    assert qm is not llama
    assert {n: type(m) for n, m in llama.named_modules()} == kinds
    after = llama.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    # Every decoder linear is int4, the head int8 per channel, the embedding int8 per row.
    linears = [n for n, m in llama.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    assert linears and all(meta["modules"][n]["bits"] == 4 and meta["modules"][n]["group_size"] == 32
                           for n in linears)
    assert all(isinstance(qm.get_submodule(n), WeightOnlyLinear) for n in linears)
    assert meta["modules"]["lm_head"]["bits"] == 8 and meta["modules"]["lm_head"]["group_size"] is None
    assert isinstance(qm.get_submodule("model.embed_tokens"), QuantizedEmbedding)
    assert meta["tied_embeddings"] is None
    assert meta["bytes"]["quantized"] < meta["bytes"]["float"] / 3


def test_int8_weight_only_agrees_with_float_on_next_token_top1(llama, prompts):
    qm, _ = quantize_lm(llama, bits=8, group_size=None)
    assert top1_agreement(llama, qm, prompts) >= 0.95
    sym, meta = quantize_lm(llama, bits=8, group_size=None, symmetric=True)
    assert meta["symmetric"] and top1_agreement(llama, sym, prompts) >= 0.95
    # The measure can fail: a model with other weights agrees about as often as chance (1/256).
    assert top1_agreement(llama, tiny_llama(seed=7), prompts) < 0.1


def test_int4_group32_weight_only_agrees_with_float_on_next_token_top1(llama, prompts):
    qm, _ = quantize_lm(llama, bits=4, group_size=32)
    int4 = top1_agreement(llama, qm, prompts)
    assert int4 >= 0.7
    q8, _ = quantize_lm(llama, bits=8, group_size=None)
    assert top1_agreement(llama, q8, prompts) > int4


def test_skip_patterns_and_float_options_keep_modules_in_float(llama):
    qm, meta = quantize_lm(llama, bits=8, group_size=None, embedding="float", lm_head="float",
                           skip=("*.mlp.down_proj",))
    assert isinstance(qm.get_submodule("model.layers.0.mlp.down_proj"), nn.Linear)
    assert isinstance(qm.get_submodule("lm_head"), nn.Linear)
    assert isinstance(qm.get_submodule("model.embed_tokens"), nn.Embedding)
    assert meta["kept_float"]["model.layers.1.mlp.down_proj"] == "skip"
    assert "lm_head" not in meta["modules"]


def test_a_group_size_that_does_not_divide_a_layer_is_lowered_and_said_so():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=96, max_position_embeddings=128)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    _, meta = quantize_lm(model, bits=4, group_size=64)
    down = meta["modules"]["model.layers.0.mlp.down_proj"]  # 96 inputs
    # int4: the largest divisor the kernel takes (32), not the largest divisor (48), which would run slowly.
    assert down["group_size"] == 32 and "used 32" in down["note"] and down["kernel"]
    assert meta["modules"]["model.layers.0.mlp.up_proj"]["group_size"] is None  # 64 of 64 inputs: per channel
    _, meta = quantize_lm(model, bits=8, group_size=64)
    assert meta["modules"]["model.layers.0.mlp.down_proj"]["group_size"] == 48


def test_saved_files_are_smaller_than_float_and_int4_smaller_than_int8(llama, tmp_path):
    float_file = tmp_path / "float.safetensors"
    save_file({k: v.contiguous() for k, v in llama.state_dict().items()}, str(float_file))
    sizes = {}
    for bits, group in ((8, None), (4, 32)):
        qm, meta = quantize_lm(llama, bits=bits, group_size=group)
        sizes[bits] = save_quantized(qm, meta, tmp_path / f"int{bits}.safetensors")
        assert sizes[bits] == (tmp_path / f"int{bits}.safetensors").stat().st_size
    assert sizes[4] < sizes[8] < float_file.stat().st_size
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file


@pytest.mark.parametrize("bits,group", [(8, None), (4, 32), (8, 64)])
def test_save_then_load_gives_identical_logits(llama, prompts, tmp_path, bits, group):
    qm, meta = quantize_lm(llama, bits=bits, group_size=group)
    path = tmp_path / "q.safetensors"
    save_quantized(qm, meta, path)
    loaded = load_quantized(path)
    ids, mask = prompts[:4], torch.ones_like(prompts[:4])
    assert torch.equal(TorchLM(qm).logits(ids, mask), TorchLM(loaded).logits(ids, mask))
    stored = read_quantized_meta(path)
    assert stored["bits"] == bits and stored["config"]["model_type"] == "llama"
    assert stored["modules"] == json.loads(json.dumps(meta["modules"]))


def _rewrite(src, dst, *, metadata=None, drop=(), change=None):
    tensors = load_file(str(src))
    for k in drop:
        tensors.pop(k)
    if change:
        tensors.update(change)
    save_file(tensors, str(dst), metadata=metadata)


def _meta_of(path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()[METADATA_KEY])


def test_a_file_without_or_with_tampered_metadata_is_refused(llama, tmp_path):
    qm, meta = quantize_lm(llama, bits=4, group_size=32)
    good = tmp_path / "good.safetensors"
    save_quantized(qm, meta, good)
    bad = tmp_path / "bad.safetensors"

    _rewrite(good, bad)  # same tensors, metadata gone
    with pytest.raises(ModelLoadError, match="no 'modelpress.weight_only' metadata"):
        load_quantized(bad)

    m = _meta_of(good)
    m["modules"]["model.layers.0.mlp.up_proj"]["bits"] = 8  # metadata no longer fits the tensors
    _rewrite(good, bad, metadata={METADATA_KEY: json.dumps(m)})
    with pytest.raises(ModelLoadError, match="up_proj"):
        load_quantized(bad)

    m = _meta_of(good)
    m["modules"]["model.layers.0.mlp.nope"] = dict(m["modules"]["model.layers.0.mlp.up_proj"])
    _rewrite(good, bad, metadata={METADATA_KEY: json.dumps(m)})
    with pytest.raises(ModelLoadError, match="nope"):
        load_quantized(bad)

    _rewrite(good, bad, metadata={METADATA_KEY: json.dumps(_meta_of(good))}, drop=("model.norm.weight",))
    with pytest.raises(ModelLoadError, match="missing"):
        load_quantized(bad)

    m = _meta_of(good)
    m["config"]["auto_map"] = {"AutoModelForCausalLM": "evil.Model"}
    _rewrite(good, bad, metadata={METADATA_KEY: json.dumps(m)})
    with pytest.raises(ModelLoadError, match="auto_map"):
        load_quantized(bad)

    m = _meta_of(good)
    m["config"]["model_type"] = "vit"  # known to transformers, but not a causal LM
    _rewrite(good, bad, metadata={METADATA_KEY: json.dumps(m)})
    with pytest.raises(ModelLoadError, match="not a causal LM"):
        load_quantized(bad)

    bad.write_bytes(good.read_bytes()[:-100])  # truncated
    with pytest.raises(ModelLoadError):
        load_quantized(bad)


def test_gpt2_conv1d_layers_are_quantized_and_the_tied_head_shares_one_int8_table(tmp_path, prompts):
    gpt2 = tiny_gpt2()
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight
    qm, meta = quantize_lm(gpt2, bits=4, group_size=32)
    convs = [n for n, m in gpt2.named_modules() if isinstance(m, Conv1D)]
    assert convs and all(meta["modules"][n]["kind"] == "conv1d" for n in convs)
    assert not any(isinstance(m, Conv1D) for m in qm.modules())
    assert meta["tied_embeddings"] == "shared" and meta["modules"]["lm_head"]["tied_to"] == "transformer.wte"
    assert qm.lm_head.qweight is qm.transformer.wte.qweight  # quantized once
    assert top1_agreement(gpt2, qm, prompts) >= 0.7

    path = tmp_path / "gpt2.safetensors"
    save_quantized(qm, meta, path)
    assert not any(k.startswith("lm_head.") for k in load_file(str(path)))  # stored once
    loaded = load_quantized(path)
    assert loaded.lm_head.qweight is loaded.transformer.wte.qweight
    ids, mask = prompts[:4], torch.ones_like(prompts[:4])
    assert torch.equal(TorchLM(qm).logits(ids, mask), TorchLM(loaded).logits(ids, mask))


def test_tied_embeddings_are_untied_explicitly_when_head_and_table_are_quantized_differently(tmp_path, prompts):
    gpt2 = tiny_gpt2()
    qm, meta = quantize_lm(gpt2, bits=8, group_size=None, embedding="float", lm_head="int8")
    assert meta["tied_embeddings"] == "untied"
    assert qm.config.tie_word_embeddings is False and gpt2.config.tie_word_embeddings is True
    assert isinstance(qm.transformer.wte, nn.Embedding) and isinstance(qm.lm_head, WeightOnlyLinear)
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight  # the input is still tied
    path = tmp_path / "untied.safetensors"
    save_quantized(qm, meta, path)
    loaded = load_quantized(path)
    ids, mask = prompts[:4], torch.ones_like(prompts[:4])
    assert torch.equal(TorchLM(qm).logits(ids, mask), TorchLM(loaded).logits(ids, mask))

    both_float, meta = quantize_lm(gpt2, bits=8, group_size=None, embedding="float", lm_head="float")
    assert meta["tied_embeddings"] == "float"
    assert both_float.lm_head.weight is both_float.transformer.wte.weight
    save_quantized(both_float, meta, path)
    loaded = load_quantized(path)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert torch.equal(TorchLM(both_float).logits(ids, mask), TorchLM(loaded).logits(ids, mask))


def test_calibrated_clip_search_is_off_by_default_and_lowers_held_out_logit_error_for_int4(llama, prompts):
    plain, meta = quantize_lm(llama, bits=4, group_size=128)
    assert meta["calibration"] is None and not any("clip_mean" in r for r in meta["modules"].values())
    calibration = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(1))
    tuned, meta = quantize_lm(llama, bits=4, group_size=128, calibration=calibration)
    assert meta["calibration"]["rows"] == 8
    clips = [r["clip_mean"] for r in meta["modules"].values() if "clip_mean" in r]
    assert clips and min(clips) < 1.0 and all(0 < c <= 1 for c in clips)
    mask = torch.ones_like(prompts)  # held out: other ids than the calibration rows
    ref = TorchLM(llama).logits(prompts, mask)
    err_plain = float((TorchLM(plain).logits(prompts, mask) - ref).pow(2).mean())
    err_tuned = float((TorchLM(tuned).logits(prompts, mask) - ref).pow(2).mean())
    assert err_tuned < 0.95 * err_plain

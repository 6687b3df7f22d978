"""A causal LM in OpenVINO with its KV cache (``lm.openvino_lm``, ``lm.openvino_compress``): export,
NNCF weight compression, file, runner.

Tiny random Llama (GQA: 4 heads, 2 KV heads) and GPT-2 (tied LM head, learned positions) are saved to a
folder and loaded back as a user loads them. A missing openvino or nncf FAILS these tests (declared extras).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modelpress.errors import ModelLoadError, RecipeError
from modelpress.optimize.lm.openvino_compress import compress_lm, weight_precisions
from modelpress.optimize.lm.openvino_lm import OpenVinoLM, export_lm, load_lm, save_lm
from modelpress.optimize.lm.runner import LMRunner
from tests.optimize.lm.tiny_lms import VOCAB, tiny_gpt2, tiny_llama

#: Float OpenVINO (f32 forced by ``load_lm``) against torch fp32, max abs logit difference at real positions.
#: Measured: 1.5e-7 (Llama) and 3e-7 (GPT-2) on logits of magnitude ≤ 1; the margin covers other CPUs' kernels.
FLOAT_ATOL = 1e-4


def _llama() -> torch.nn.Module:
    return tiny_llama()


def _gpt2() -> torch.nn.Module:
    return tiny_gpt2(special_id=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[torch.nn.Module, object]]:
    """name → (the transformers model as loaded from its saved folder, its float OpenVINO export)."""
    from modelpress.optimize.hf_env import prepare_transformers

    prepare_transformers()
    from transformers import AutoModelForCausalLM

    out = {}
    for name, build in (("llama", _llama), ("gpt2", _gpt2)):
        torch.manual_seed(0)
        folder = tmp_path_factory.mktemp(name)
        build().save_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
        out[name] = (model, export_lm(model, folder))
    return out


@pytest.fixture(scope="module")
def float_files(models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("float")
    files = {}
    for name, (_, ov_model) in models.items():
        files[name] = d / f"{name}.ovz"
        save_lm(ov_model, files[name], {})
    return files


def _padded_rows(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    for row, length in enumerate((12, 9, 5, 1)):
        mask[row, length:] = 0
        ids[row, length:] = 0  # padding id: what a tokenizer's right padding leaves there
    return ids, mask


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_float_openvino_logits_match_torch_at_the_real_positions_of_right_padded_rows(models, float_files, name):
    model, _ = models[name]
    ids, mask = _padded_rows()
    lm = load_lm(float_files[name], threads=1)
    assert isinstance(lm, LMRunner)
    got = lm.logits(ids, mask)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
    assert got.shape == want.shape and got.dtype == torch.float32
    real = mask.bool()
    assert (got - want).abs()[real].max().item() <= FLOAT_ATOL
    assert lm.execution()["inference_precision"] == "f32"


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_greedy_prefill_and_steps_give_the_ids_torch_generate_gives(models, float_files, name):
    model, _ = models[name]
    prompt = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(2))
    new = 16
    with torch.no_grad():
        want = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                              max_new_tokens=new, min_new_tokens=new, pad_token_id=0)[:, prompt.shape[1]:]
    lm = load_lm(float_files[name], threads=1)
    nxt, state = lm.prefill(prompt, torch.ones_like(prompt))
    got = [nxt]
    for _ in range(new - 1):
        nxt, state = lm.step(nxt, state)
        got.append(nxt)
    assert torch.equal(torch.stack(got, 1), want)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_left_padded_prompts_decode_like_torch_generate_with_the_same_padding(models, float_files, name):
    model, _ = models[name]
    ids = torch.randint(2, VOCAB, (3, 8), generator=torch.Generator().manual_seed(8))
    mask = torch.ones_like(ids)
    for row, pad in ((1, 3), (2, 6)):
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    with torch.no_grad():
        want = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=10, min_new_tokens=10,
                              pad_token_id=0)[:, ids.shape[1]:]
    lm = load_lm(float_files[name], threads=1)
    nxt, state = lm.prefill(ids, mask)
    got = [nxt]
    for _ in range(9):
        nxt, state = lm.step(nxt, state)
        got.append(nxt)
    assert torch.equal(torch.stack(got, 1), want)
    with pytest.raises(ValueError, match="padding"):
        lm.prefill(ids, mask.flip(1))  # right padding: the last position of a row is not a real token


def test_a_one_token_one_row_prompt_decodes_like_torch(models, float_files):
    """The trace saw 2 rows, 3 new tokens and 2 past ones: the smallest shapes must not take another branch."""
    model, _ = models["llama"]
    prompt = torch.tensor([[5]])
    with torch.no_grad():
        want = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                              max_new_tokens=6, min_new_tokens=6, pad_token_id=0)[:, 1:]
    lm = load_lm(float_files["llama"], threads=1)
    nxt, state = lm.prefill(prompt, torch.ones_like(prompt))
    got = [nxt]
    for _ in range(5):
        nxt, state = lm.step(nxt, state)
        got.append(nxt)
    assert torch.equal(torch.stack(got, 1), want)


def test_interleaved_generations_keep_their_own_caches_and_a_spent_state_is_refused(float_files):
    lm = load_lm(float_files["llama"], threads=1)
    a = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(3))
    b = torch.randint(0, VOCAB, (2, 4), generator=torch.Generator().manual_seed(4))

    def alone(prompt: torch.Tensor) -> list[torch.Tensor]:
        nxt, st = lm.prefill(prompt, torch.ones_like(prompt))
        out = [nxt]
        for _ in range(4):
            nxt, st = lm.step(nxt, st)
            out.append(nxt)
        return out

    want_a, want_b = alone(a), alone(b)
    na, sa = lm.prefill(a, torch.ones_like(a))
    nb, sb = lm.prefill(b, torch.ones_like(b))
    got_a, got_b = [na], [nb]
    for _ in range(4):
        na, sa2 = lm.step(na, sa)
        nb, sb = lm.step(nb, sb)
        got_a.append(na)
        got_b.append(nb)
        spent, sa = sa, sa2
    assert all(torch.equal(x, y) for x, y in zip(got_a, want_a))
    assert all(torch.equal(x, y) for x, y in zip(got_b, want_b))
    with pytest.raises(ValueError, match="once"):
        lm.step(na, spent)


def test_export_leaves_the_callers_model_unchanged_and_in_its_own_mode(models):
    model, _ = models["llama"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    try:
        ov_model = export_lm(model)
        assert model.training  # put back in the mode it came in
    finally:
        model.eval()
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    names = [p.any_name for p in ov_model.inputs]
    assert names == ["input_ids", "attention_mask", "position_ids", "logits_index", "beam_idx"]
    # stateful: the KV cache is one variable per layer's keys and values, not model inputs
    assert len(ov_model.get_variables()) == 2 * model.config.num_hidden_layers


def test_a_16_bit_model_is_refused_rather_than_exported_half_way(models):
    import copy

    model, _ = models["llama"]
    with pytest.raises(RecipeError, match="float32"):
        export_lm(copy.deepcopy(model).to(torch.bfloat16))


def _next_token_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(-1) == b.argmax(-1)).float().mean().item()


def test_int8_asym_keeps_top1_agreement_with_float_and_shrinks_the_file(models, float_files, tmp_path):
    _, ov_model = models["llama"]
    q, meta = compress_lm(ov_model, mode="int8_asym", group_size=None)
    assert weight_precisions(ov_model)["layers"] == {"f32": 14}  # the float model was not compressed in place
    assert (meta["embedding"], meta["lm_head"], meta["layers"]) == ("int8_asym", "int8_asym", {"int8_asym": 14})
    path = tmp_path / "int8.ovz"
    size = save_lm(q, path, meta)
    assert size == path.stat().st_size and size < 0.6 * float_files["llama"].stat().st_size
    ids = torch.randint(0, VOCAB, (8, 32), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    f = load_lm(float_files["llama"], 1).logits(ids, mask)
    agreement = _next_token_agreement(load_lm(path, 1).logits(ids, mask), f)
    assert agreement >= 0.9, agreement


def test_int4_asym_group_32_makes_a_smaller_file_than_int8_and_keeps_embedding_and_head_int8(models, tmp_path):
    _, ov_model = models["llama"]
    q8, m8 = compress_lm(ov_model, mode="int8_asym", group_size=None)
    q4, m4 = compress_lm(ov_model, mode="int4_asym", group_size=32)
    assert m4["layers"] == {"int4_asym g32": 14}
    # NNCF's default for int4: the first (embedding) and last (LM head) layers stay int8_asym per channel
    assert (m4["embedding"], m4["lm_head"]) == ("int8_asym", "int8_asym")
    assert save_lm(q4, tmp_path / "int4.ovz", m4) < save_lm(q8, tmp_path / "int8.ovz", m8)


def test_all_layers_puts_the_tied_gpt2_embedding_and_head_in_int4_too(models):
    _, ov_model = models["gpt2"]
    _, default = compress_lm(ov_model, mode="int4_sym", group_size=32)
    _, every = compress_lm(ov_model, mode="int4_sym", group_size=32, all_layers=True)
    assert default["tied_lm_head"] and every["tied_lm_head"]  # one weight for both, compressed once
    assert (default["embedding"], default["lm_head"]) == ("int8_asym", "int8_asym")
    assert (every["embedding"], every["lm_head"]) == ("int4_sym g32", "int4_sym g32")
    assert every["layers"] == {"int4_sym g32": 8}


def test_a_group_size_that_does_not_divide_a_layer_is_adjusted_and_reported(models):
    _, ov_model = models["llama"]
    # hidden 64 < 128: q/k/v/o, gate and up take the largest power of two that divides 64; down (128 in) keeps 128
    _, meta = compress_lm(ov_model, mode="int4_asym", group_size=128)
    assert meta["layers"] == {"int4_asym g128": 2, "int4_asym g64": 12}
    with pytest.raises(Exception, match="group size"):
        compress_lm(ov_model, mode="int4_asym", group_size=128, group_size_fallback="error")


def test_save_then_load_round_trips_identical_logits(models, tmp_path):
    _, ov_model = models["gpt2"]
    q, meta = compress_lm(ov_model, mode="int4_asym", group_size=32)
    path = tmp_path / "lm.ovz"
    save_lm(q, path, meta)
    ids, mask = _padded_rows(6)
    compiled = __import__("openvino").Core().compile_model(q, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                      "INFERENCE_NUM_THREADS": 1})
    before = OpenVinoLM(compiled).logits(ids, mask)
    loaded = load_lm(path, threads=1)
    assert torch.equal(loaded.logits(ids, mask), before)
    assert torch.equal(load_lm(path, threads=1).logits(ids, mask), before)
    assert loaded.meta["mode"] == "int4_asym" and loaded.meta["kind"] == "causal_lm"
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file


def test_load_refuses_a_file_that_is_not_a_saved_lm(tmp_path):
    bad = tmp_path / "x.ovz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError):
        load_lm(bad, threads=1)


def test_data_aware_int4_with_awq_and_scale_estimation_runs_on_calibration_rows(models, float_files, tmp_path):
    _, ov_model = models["llama"]
    g = torch.Generator().manual_seed(7)
    rows = [torch.randint(0, VOCAB, (24,), generator=g) for _ in range(6)]
    rows.append(torch.randint(0, VOCAB, (2, 16), generator=g))  # a 2-D tensor counts as two rows
    q, meta = compress_lm(ov_model, mode="int4_asym", group_size=32, calibration=rows, awq=True, scale_estimation=True)
    assert meta["calibration_rows"] == 8 and meta["awq"] and meta["scale_estimation"]
    assert meta["layers"] == {"int4_asym g32": 14}
    plain, _ = compress_lm(ov_model, mode="int4_asym", group_size=32)
    ids = torch.randint(0, VOCAB, (4, 16), generator=g)
    mask = torch.ones_like(ids)
    save_lm(q, tmp_path / "aware.ovz", meta)
    save_lm(plain, tmp_path / "plain.ovz", {"mode": "int4_asym"})
    aware = load_lm(tmp_path / "aware.ovz", 1).logits(ids, mask)
    assert not torch.equal(aware, load_lm(tmp_path / "plain.ovz", 1).logits(ids, mask))  # the data changed the weights
    assert torch.isfinite(aware).all()


def test_compress_lm_refuses_options_its_mode_does_not_take(models):
    _, ov_model = models["llama"]
    with pytest.raises(RecipeError, match="per output channel"):
        compress_lm(ov_model, mode="int8_asym", group_size=32)
    with pytest.raises(RecipeError, match="calibration"):
        compress_lm(ov_model, mode="int4_asym", group_size=32, awq=True)
    with pytest.raises(RecipeError, match="group_size"):
        compress_lm(ov_model, mode="int4_asym", group_size=None)
    with pytest.raises(RecipeError, match="mode"):
        compress_lm(ov_model, mode="nf4", group_size=32)


def test_importing_the_module_does_not_import_openvino_or_nncf():
    code = ("import sys, modelpress.optimize.lm.openvino_lm, modelpress.optimize.lm.openvino_compress; "
            "print(sorted(m for m in ('openvino', 'nncf', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"

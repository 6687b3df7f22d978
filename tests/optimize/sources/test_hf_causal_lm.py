"""``hf:`` causal LMs (issue 23 items 1 and 3): checked at submit, loaded as blocks of text, and run through the
weight-only job in torch and OpenVINO, with perplexity, next-token agreement and decode speed measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelpress.errors import DataError, UserInputError
from modelpress.optimize.recipes import resolve_recipe, with_runtime
from modelpress.optimize.sources import parse_model_ref
from modelpress.optimize.sources.submit import check_ref, step_problems
from modelpress.zoo.families import build_family, family


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """The coverage matrix's random Llama, saved as its users save it, with eval and calibration text."""
    return build_family(family("Llama"), tmp_path_factory.mktemp("lm"))


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return build_family(family("GPT-2"), tmp_path_factory.mktemp("gpt2"))


def _ref(built, **data):
    return parse_model_ref(built.model, data={**built.data, **data}, max_length=built.max_length,
                           latency_batches=(1,))


def test_a_causal_lm_folder_with_text_passes_submit_and_takes_only_weight_only_recipes(llama):
    ref = _ref(llama)
    assert check_ref(ref, max_bytes=1 << 30) == []
    assert step_problems(ref, resolve_recipe("int4-weight-only")) == []
    (where, msg), = step_problems(ref, resolve_recipe("static-int8"))
    assert where == ("recipes",) and "quantize_weight_only" in msg and "'quantize_static'" in msg


def test_weight_only_recipes_are_refused_at_submit_for_a_model_that_is_not_a_causal_lm(tmp_path):
    bert = build_family(family("BERT"), tmp_path)
    ref = parse_model_ref(bert.model, data=bert.data, max_length=bert.max_length)
    (where, msg), = step_problems(ref, resolve_recipe("int8-weight-only"))
    assert "for causal LMs" in msg


def test_labelled_rows_and_a_train_file_are_refused_at_submit_with_the_line(llama, tmp_path):
    bad = tmp_path / "eval.jsonl"
    bad.write_text(json.dumps({"text": "one"}) + "\n" + json.dumps({"text": "two", "label": 1}) + "\n")
    problems = check_ref(_ref(llama, eval=str(bad)), max_bytes=1 << 30)
    assert any(loc == ("data", "eval") and "line 2" in m and "'label'" in m for loc, m in problems)
    problems = check_ref(_ref(llama, train=llama.data["eval"]), max_bytes=1 << 30)
    assert any(loc == ("data", "train") and "not offered" in m for loc, m in problems)


def test_the_worker_loads_blocks_of_text_split_apart_and_judges_by_perplexity(llama):
    from modelpress.optimize.sources import get_source

    loaded = get_source("hf").load(_ref(llama))
    spec, td = loaded.spec, loaded.spec.data()
    assert spec.metric == "perplexity" and spec.extra["task"] == "causal-lm"
    block = spec.extra["block"]
    assert td.eval_inputs[0].shape[1] == block == llama.max_length
    rows = [tuple(r.tolist()) for r in td.eval_inputs[0]]
    assert not set(rows) & {tuple(r.tolist()) for r in td.val_inputs[0]}  # validation blocks are not reported
    assert type(loaded.model).__name__ == "LlamaForCausalLM"


@pytest.mark.parametrize("runtime", ["torch", "openvino"])
def test_int8_weight_only_keeps_perplexity_and_reports_decode_speed(llama, tmp_path, runtime):
    from modelpress.optimize import optimize_model

    r = optimize_model(model_ref=_ref(llama), recipe=with_runtime(resolve_recipe("int8-weight-only"), runtime),
                       engine="x86", store=tmp_path / "store", runs=2)
    assert r.metric_name == "perplexity" and r.runtime == runtime
    assert r.status == "succeeded", r.reason
    assert abs(r.metric_after - r.metric_before) <= 0.01 * r.metric_before
    # OpenVINO's file also holds the graph's XML, which outweighs this tiny model's int8 weights.
    assert r.size_after_bytes < (0.6 if runtime == "torch" else 0.9) * r.size_before_bytes
    assert Path(r.artifact_path).is_file() and r.extra["reload_check"]["equal"]
    assert r.flops_before == r.flops_after > 0 and r.params_before == r.params_after > 0
    lm = r.extra["lm"]
    assert lm["next_token_agreement"] > 0.9
    after = r.latency_after[0]
    assert after["kind"] == "prefill" and after["decode_tokens_per_s"] > 0 and after["median_ms"] > 0
    assert [p["phase"] for p in r.extra["timing"]["phases"]][-1] == "lm final"  # timed under the host lock
    again = optimize_model(model_ref=_ref(llama), recipe=with_runtime(resolve_recipe("int8-weight-only"), runtime),
                           engine="x86", store=tmp_path / "store", runs=2)
    assert again.reused and again.artifact_sha256 == r.artifact_sha256
    # As a user loads it, without the job: an LM runner, decoding with its KV cache.
    import modelpress
    import torch

    runner = modelpress.load(r.artifact_path)
    ids = torch.tensor([[1, 70, 71, 72, 73]])
    nxt, state = runner.prefill(ids, torch.ones_like(ids))
    nxt2, _ = runner.step(nxt, state)
    full = runner.logits(torch.cat([ids, nxt[:, None]], 1), torch.ones(1, 6, dtype=torch.long))
    assert int(full[0, -1].argmax()) == int(nxt2[0]) and full.shape[-1] == r.extra["model"]["vocab_size"]


def test_auto_builds_each_runtime_and_its_options_and_keeps_one_chosen_on_validation_text(gpt2, tmp_path):
    from modelpress.optimize import optimize_model

    r = optimize_model(model_ref=_ref(gpt2), recipe=resolve_recipe("int4-weight-only"), engine="x86",
                       store=tmp_path / "store", runs=2)
    cands = r.extra["candidates"]
    assert {c["runtime"] for c in cands} == {"torch", "openvino"}
    assert sum(bool(c.get("chosen")) for c in cands) == 1
    assert all("validation_perplexity" in c for c in cands if c["status"] == "built")
    assert r.size_after_bytes < r.size_before_bytes / 2


def test_a_recipe_with_other_steps_fails_on_the_worker_with_the_reason(llama, tmp_path):
    from modelpress.optimize import optimize_model

    with pytest.raises(UserInputError, match="quantize_weight_only"):
        optimize_model(model_ref=_ref(llama), recipe=resolve_recipe("dynamic-int8"), engine="x86",
                       store=tmp_path / "store")


def test_a_metric_other_than_perplexity_is_refused_on_the_worker(llama):
    from modelpress.optimize.sources import get_source

    ref = parse_model_ref(llama.model, data=llama.data, max_length=llama.max_length, metric="cosine")
    with pytest.raises(DataError, match="perplexity"):
        get_source("hf").load(ref)


def test_a_budget_int4_cannot_keep_is_rejected_with_the_numbers_and_the_file_kept_apart(llama, tmp_path):
    from modelpress.optimize import optimize_model
    from modelpress.optimize.recipes import Recipe

    tight = Recipe.from_dict({"name": "int4-no-rise", "runtime": "torch",
                              "steps": [{"type": "quantize_weight_only", "bits": 4, "group_size": 32,
                                         "lm_head": "same", "data_aware": []}],
                              "budget": {"max_drop": 0.0, "relative": True, "max_float_layers": 0}})
    r = optimize_model(model_ref=_ref(llama), recipe=tight, engine="x86", store=tmp_path / "store", runs=1)
    assert r.status == "rejected" and r.metric_after > r.metric_before
    assert "perplexity" in r.reason and Path(r.artifact_path).parent.name == "rejected"

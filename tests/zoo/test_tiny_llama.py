"""The tiny Llama trained at first use on ``pydoc_data.topics``: splits, offline loading, the cache, learning.

One small build (``SMALL``, ``STEPS`` steps, about 10 s) through ``tiny_llama_dir`` is shared by the module;
the default build (~3 min) is never run here.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from modelpress.optimize.hf_env import prepare_transformers
from modelpress.optimize.sources.hf_files import check_folder
from modelpress.zoo import tiny_llama
from modelpress.zoo.tiny_llama import (
    SPLITS,
    build_key,
    build_tiny_llama,
    corpus_splits,
    data_folder,
    pack,
    perplexity,
    read_split,
    split_topics,
    tiny_llama_dir,
    topic_groups,
)

SMALL = {"vocab_size": 1024, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 256}
STEPS = 200


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small model's folder, built once through the cache."""
    return tiny_llama_dir(tmp_path_factory.mktemp("cache"), steps=STEPS, **SMALL)


def _auto(folder: Path) -> tuple[object, object]:
    prepare_transformers()  # the torchvision shim transformers' import needs here, and offline forced
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(folder, local_files_only=True),
            AutoTokenizer.from_pretrained(folder, local_files_only=True))


# ----------------------------------------------------------------------------- splits
def test_the_splits_are_disjoint_by_topic_and_by_content_and_the_same_on_every_call() -> None:
    splits = corpus_splits()
    assert list(splits) == list(SPLITS)
    assert len(splits["eval"]) >= 300 and len(splits["validation"]) >= 100 and len(splits["calibration"]) >= 64
    total = sum(map(len, splits.values()))
    assert 0.6 <= len(splits["train"]) / total <= 0.75
    rows = [row for split in splits.values() for row in split]
    assert len(rows) == len(set(rows)), "a row text occurs in two splits (or twice in one)"
    assert all(row and row == " ".join(row.split()) and len(row) <= tiny_llama.ROW_CHARS for row in rows)
    json.dumps(splits)  # JSON-able as it is

    topics = split_topics()
    owner = [name for names in topics.values() for name in names]
    assert len(owner) == len(set(owner)) == 79, "each topic in exactly one split"
    # Topics that repeat each other's paragraphs (compound holds if, while, try...) share a split.
    where = {name: split for split, names in topics.items() for name in names}
    for group in topic_groups():
        assert len({where[name] for name in group}) == 1, group
    assert where["if"] == where["compound"] == "train"  # the big group is too big to hold out

    assert corpus_splits() == splits and split_topics() == topics
    assert corpus_splits(seed=1)["eval"] != splits["eval"], "the seed picks other held-out topics"


def test_no_held_out_paragraph_of_forty_characters_or_more_appears_in_a_train_row() -> None:
    splits = corpus_splits()
    train = "\n".join(splits["train"])
    held_out = {p for split in SPLITS[1:] for row in splits[split] for p in row.split(". ") if len(p) >= 40}
    leaked = [p for p in held_out if p in train]
    # A stock sentence may recur ("Changed in version 3.x"); whole passages must not.
    assert len(leaked) <= 0.02 * len(held_out), leaked[:5]


# ----------------------------------------------------------------------------- the built folder
def test_the_built_folder_loads_offline_through_the_auto_classes_and_its_tokenizer_round_trips_text(
        built: Path) -> None:
    assert sorted(p.name for p in built.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                       "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((built / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is False
    assert "auto_map" not in config and config.get("attn_implementation") in (None, "eager", "sdpa")
    assert json.loads((built / "tokenizer_config.json").read_text())["tokenizer_class"] in (
        "PreTrainedTokenizerFast", "TokenizersBackend")
    assert check_folder(built).problems == [] or all("causal-lm" in p for p in check_folder(built).problems)

    model, tok = _auto(built)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == len(tok) == SMALL["vocab_size"]
    assert model.config.hidden_size == 64 and model.config.num_key_value_heads == 2
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    for text in ["def f(x):\n    return x ** 2  # squares", "Ünïcödé — 日本語 and\ttabs", read_split(built, "eval")[0]]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text

    splits = corpus_splits()
    assert {split: read_split(built, split) for split in SPLITS} == splits
    assert sorted(p.name for p in data_folder(built).iterdir()) == sorted(f"{s}.jsonl" for s in SPLITS)


def test_training_lowers_the_eval_perplexity_below_the_untrained_models_and_a_unigram_models(built: Path) -> None:
    import math

    import torch
    from transformers import LlamaForCausalLM

    model, tok = _auto(built)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        untrained = LlamaForCausalLM(model.config)
    rows = read_split(built, "eval")
    trained_ppl, untrained_ppl = perplexity(model, tok, rows), perplexity(untrained, tok, rows)
    # Token frequencies fitted on train, scored on the eval tokens perplexity predicts (a block's first is not).
    counts = torch.bincount(pack(tok, read_split(built, "train")).flatten(), minlength=len(tok)).double() + 0.5
    predicted = pack(tok, rows)[:, 1:].flatten()
    unigram_ppl = math.exp(-float((counts / counts.sum()).log()[predicted].mean()))
    assert untrained_ppl > 0.5 * SMALL["vocab_size"]  # near uniform over the vocabulary
    # 200 small steps reach about 190 here, against 1,040 untrained and 400 for the unigram model.
    assert trained_ppl < untrained_ppl / 3, (trained_ppl, untrained_ppl)
    assert trained_ppl < 0.75 * unigram_ppl, (trained_ppl, unigram_ppl)


# ----------------------------------------------------------------------------- the cache
def test_a_build_leaves_no_temp_folder_and_a_second_call_reuses_the_folder_without_training(
        built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = built.parent.parent
    assert built.parent.name == f"tiny-llama-{build_key(steps=STEPS, **SMALL)}"
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [built.parent.name]
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name]
    before = {p.name: p.stat().st_mtime_ns for p in built.iterdir()}

    def no_training(*args: object, **kwargs: object) -> Path:
        raise AssertionError("retrained a cached model")

    monkeypatch.setattr(tiny_llama, "build_tiny_llama", no_training)
    assert tiny_llama_dir(cache, steps=STEPS, **SMALL) == built
    assert {p.name: p.stat().st_mtime_ns for p in built.iterdir()} == before
    assert build_key(steps=STEPS + 1, **SMALL) != build_key(steps=STEPS, **SMALL)
    assert build_key(steps=STEPS, **{**SMALL, "hidden_size": 32}) != build_key(steps=STEPS, **SMALL)


def test_a_crash_while_building_leaves_nothing_and_the_next_call_builds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(model: object, blocks: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("killed while training")

    monkeypatch.setattr(tiny_llama, "_train", crash)
    with pytest.raises(KeyboardInterrupt):
        tiny_llama_dir(tmp_path, steps=1, **SMALL)
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []

    monkeypatch.undo()
    # A temp folder left by a process that died (no finally ran) is removed by the next build.
    name = f"tiny-llama-{build_key(steps=1, **SMALL)}"
    (tmp_path / f".{name}.tmp-dead" / "model").mkdir(parents=True)
    folder = tiny_llama_dir(tmp_path, steps=1, **SMALL)
    assert (folder / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [name]


def test_two_concurrent_callers_get_one_folder_trained_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    real = tiny_llama.build_tiny_llama

    def counted(folder: Path, **kwargs: object) -> Path:
        calls.append(folder)
        return real(folder, **kwargs)

    monkeypatch.setattr(tiny_llama, "build_tiny_llama", counted)
    results: list[Path] = []
    # Threads open the lock file separately, so flock excludes them as it would two processes.
    threads = [threading.Thread(target=lambda: results.append(tiny_llama_dir(tmp_path, steps=1, **SMALL)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 2 and results[0] == results[1]
    assert len(calls) == 1
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_an_unknown_size_setting_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="hidden_sise"):
        tiny_llama_dir(tmp_path, steps=1, hidden_sise=64)
    assert list(tmp_path.iterdir()) == []


def test_building_over_a_folder_that_holds_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model-data").mkdir()
    (tmp_path / "model-data" / "eval.jsonl").write_text('{"text": "an older build"}\n')
    with pytest.raises(FileExistsError, match="model-data"):
        build_tiny_llama(tmp_path / "model", steps=1, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-data"]

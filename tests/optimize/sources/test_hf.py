"""``hf:`` folders: dynamic and static int8 through optimize_model; custom code and bad labels refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from modelpress.errors import DataError, ModelLoadError
from tests.optimize.sources.conftest import ref_of, run
from tests.own_models_fixtures import ACCURACY_FLOOR, write_jsonl


@pytest.mark.parametrize("recipe", ["dynamic-int8", "static-int8"])
def test_a_bert_classifier_folder_is_quantized_and_reloads_identically(hf_model, tmp_path: Path, recipe: str) -> None:
    from modelpress.optimize.backends import is_quantized_module
    import modelpress

    r = run(ref_of(hf_model), recipe, tmp_path)
    assert r.status == "succeeded"
    assert r.metric_name == "accuracy"  # labels given (as id2label names) → accuracy, not agreement
    # The classifier learned its topics (chance is 1/3): the int8 delta is measured on a working model.
    assert r.metric_before >= ACCURACY_FLOOR["hf"], r.metric_before
    assert 0.0 <= r.metric_after <= 1.0 and abs(r.metric_after - r.metric_before) < 0.15
    assert r.extra["reload_check"]["equal"] is True
    assert r.extra["model"]["graph"] == "exported"  # the traceable route static int8 needs
    assert r.size_after_bytes < r.size_before_bytes
    assert any(is_quantized_module(m) for m in modelpress.load(r.artifact_path).modules())
    assert "calibration file" in r.eval_description


def test_a_folder_whose_config_asks_for_custom_code_is_refused(hf_model, tmp_path: Path) -> None:
    folder = tmp_path / "custom"
    shutil.copytree(Path(hf_model.model.removeprefix("hf:")), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "modeling_evil.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w')\n")
    with pytest.raises(ModelLoadError, match="auto_map.*never runs a model's own code"):
        run(ref_of(hf_model, path=str(folder), name=str(folder)), "dynamic-int8", tmp_path / "store")
    assert not (tmp_path / "pwned").exists()


def test_a_label_outside_the_class_count_is_refused_naming_it(hf_model, tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "goal match", "label": 0}, {"text": "rain", "label": 3}])
    with pytest.raises(DataError, match="label 3 in row 2 is outside the model's 3 classes"):
        run(ref_of(hf_model, data={"eval": str(bad)}), "dynamic-int8", tmp_path)


def test_pickled_weights_are_not_loaded(hf_model, tmp_path: Path) -> None:
    folder = tmp_path / "bin"
    shutil.copytree(Path(hf_model.model.removeprefix("hf:")), folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        run(ref_of(hf_model, path=str(folder), name=str(folder)), "dynamic-int8", tmp_path / "store")


def test_a_base_encoder_is_judged_by_cosine_of_mean_pooled_embeddings(hf_model, tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    src = Path(hf_model.model.removeprefix("hf:"))
    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    folder = tmp_path / "encoder"
    BertModel(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": f"goal match rain {i}"} for i in range(40)])
    ref = ref_of(hf_model, path=str(folder), name=str(folder), data={"eval": str(texts)}, max_length=16)
    r = run(ref, "dynamic-int8", tmp_path / "store")
    assert r.metric_name == "cosine" and r.metric_before == pytest.approx(1.0, abs=1e-5)
    assert 0.8 < r.metric_after <= 1.0 + 1e-6
    assert r.latency_after[0]["input_shape"] == [[1, 16], [1, 16], [1, 16]]  # max_length from the ref
    # No calibration file: seeded fifths set aside for validation and calibration, 24 rows reported.
    assert "40 rows; 8 (seeded random" in r.eval_description and "another 8 of them" in r.eval_description
    assert "reported on the other 24 rows" in r.eval_description


def _tiny(tmp_path: Path, name: str, **config: object) -> Path:
    from tests.bad_input.test_hostile_hf_folders import build_tiny_bert

    folder = build_tiny_bert(tmp_path / name, shard_size="8KB")
    if config:
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, **config}))
    return folder


def _tiny_ref(folder: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    from modelpress.optimize.sources import parse_model_ref

    texts = write_jsonl(tmp_path / f"{folder.name}.jsonl", [{"text": f"goal rain song {i}"} for i in range(20)])
    return parse_model_ref(f"hf:{folder}", data={"eval": str(texts)})


def test_a_shard_index_naming_another_file_by_absolute_path_is_refused_whatever_transformers_checks(
        tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import hub

    from modelpress.optimize.sources import get_source

    folder = _tiny(tmp_path, "bert")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    last = sorted(set(index["weight_map"].values()))[-1]
    theirs = {k: v.clone().fill_(7.0) for k, v in load_file(str(folder / last)).items()}
    save_file(theirs, str(tmp_path / "other-team.safetensors"))
    index["weight_map"] = {k: (str(tmp_path / "other-team.safetensors") if v == last else v)
                           for k, v in index["weight_map"].items()}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / last).unlink()
    # transformers 5.25 refuses such names itself (_check_shard_filenames_stay_in_model_dir); without that
    # check (other releases) it joins them with os.path.join and reads the other team's tensors:
    monkeypatch.setattr(hub, "_check_shard_filenames_stay_in_model_dir", lambda *a, **k: None)
    leaked = dict(AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).named_parameters())
    name = next(k for k in theirs if k in leaked)
    assert bool((leaked[name] == 7.0).all())
    # modelpress refuses the folder with its own rule, before transformers opens it.
    with pytest.raises(ModelLoadError, match="maps tensor .* which is not a file name inside the folder"):
        get_source("hf").load(_tiny_ref(folder, tmp_path))


def test_the_attention_implementation_is_ours_and_a_hub_kernel_is_refused_on_the_worker(tmp_path):
    from modelpress.optimize.sources import get_source

    src = get_source("hf")
    default = src._load_model(str(_tiny(tmp_path, "default")), task="sequence-classification")
    eager = src._load_model(str(_tiny(tmp_path, "eager", attn_implementation="eager")), task="sequence-classification")
    assert _attn(default) == "sdpa" and _attn(eager) == "eager"
    for value in ("kernels-community/flash-attn", "flash_attention_2"):
        hostile = _tiny(tmp_path, value.replace("/", "-"), attn_implementation=value)
        with pytest.raises(ModelLoadError, match=f"sets attn_implementation to '{value}'; allowed: 'eager', 'sdpa'"):
            src.load(_tiny_ref(hostile, tmp_path))


def _attn(model) -> str:  # type: ignore[no-untyped-def]
    configs = {m.config._attn_implementation for m in model.modules() if hasattr(m, "config")}
    assert len(configs) == 1, configs
    return configs.pop()


def test_a_tokenizer_class_that_is_not_a_transformers_tokenizer_is_refused_on_the_worker(tmp_path):
    from modelpress.optimize.sources import get_source

    folder = _tiny(tmp_path, "bert")
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    # A class name (so it passes the submit-time shape check), but AutoTokenizer would call
    # AutoModel.from_pretrained on the folder with none of modelpress's arguments.
    (folder / "tokenizer_config.json").write_text(json.dumps({**tok, "tokenizer_class": "AutoModel"}))
    with pytest.raises(ModelLoadError, match="tokenizer_class to 'AutoModel', which is not a tokenizer class built"):
        get_source("hf").tokenizer(str(folder))


def test_a_tokenizer_class_transformers_ships_but_does_not_map_loads(tmp_path):
    # transformers maps distilbert to BertTokenizer, yet a DistilBERT tokenizer saves "DistilBertTokenizer" as its
    # class: the coverage matrix found every DistilBERT folder refused on the worker.
    from modelpress.optimize.sources import get_source
    from modelpress.zoo.families import build_family, family

    built = build_family(family("DistilBERT"), tmp_path)
    folder = built.model.removeprefix("hf:")
    assert json.loads((Path(folder) / "tokenizer_config.json").read_text())["tokenizer_class"] == "DistilBertTokenizer"
    assert get_source("hf").tokenizer(folder)("a sentence")["input_ids"][0] == 101  # [CLS] of its vocabulary
    tok = json.loads((Path(folder) / "tokenizer_config.json").read_text())
    # A name of the same shape that transformers has, but not a tokenizer class, is still refused.
    (Path(folder) / "tokenizer_config.json").write_text(json.dumps({**tok, "tokenizer_class": "AutoTokenizer"}))
    with pytest.raises(ModelLoadError, match="not a tokenizer class built"):
        get_source("hf").tokenizer(folder)


# ----------------------------------------------------------------------------- the train split
def _tiny_text_ref(tmp_path: Path, train_rows: list[dict] | None):  # type: ignore[no-untyped-def]
    """A tiny BERT folder, 20 eval sentences ``"goal rain song i"`` and, when given, a train JSONL."""
    from modelpress.optimize.sources import parse_model_ref
    from tests.optimize.sources.conftest import tiny_bert

    folder = tiny_bert(tmp_path)
    ev = write_jsonl(tmp_path / "eval.jsonl", [{"text": f"goal rain song {i}", "label": i % 3} for i in range(20)])
    data = {"eval": str(ev)}
    if train_rows is not None:
        data["train"] = str(write_jsonl(tmp_path / "train.jsonl", train_rows))
    return parse_model_ref(f"hf:{folder}", data=data, latency_batches=(1,))


def test_a_train_jsonl_is_read_with_label_names_or_indices_and_rows_whose_text_is_in_eval_are_dropped(tmp_path):
    from modelpress.optimize.sources import get_source

    rows = [{"text": f"match storm band {i}", "label": ["LABEL_0", 1, "LABEL_2"][i % 3]} for i in range(12)]
    rows += [{"text": "goal rain song 3", "label": 0}, {"text": "goal rain song 17", "label": 2}]  # eval rows
    td = get_source("hf").load(_tiny_text_ref(tmp_path, rows)).spec.data()
    input_ids = td.train_inputs[0]
    assert input_ids.shape == (12, 16)  # padded to the eval rows' max_length
    assert td.train_labels.tolist() == [0, 1, 2] * 4
    assert "train: 12 rows from train.jsonl, 2 also in the eval file dropped" in td.description


def test_a_train_jsonl_without_labels_gives_no_train_labels(tmp_path):
    from modelpress.optimize.sources import get_source

    td = get_source("hf").load(_tiny_text_ref(tmp_path, [{"text": f"band {i}"} for i in range(5)])).spec.data()
    assert td.train_inputs[0].shape[0] == 5 and td.train_labels is None


def test_a_train_jsonl_of_eval_sentences_only_is_refused(tmp_path):
    from modelpress.optimize.sources import get_source

    rows = [{"text": f"goal rain song {i}"} for i in (1, 2, 2)]
    with pytest.raises(DataError, match="train data train.jsonl: all 3 of its rows are also in the eval data"):
        get_source("hf").load(_tiny_text_ref(tmp_path, rows))


def test_a_train_label_that_is_not_one_of_the_models_labels_is_refused_on_the_worker_naming_the_file(tmp_path):
    from modelpress.optimize.sources import get_source

    rows = [{"text": "band", "label": 1}, {"text": "storm", "label": "jazz"}]
    with pytest.raises(DataError, match="train.jsonl: label 'jazz' in row 2 is not one of the model's labels"):
        get_source("hf").load(_tiny_text_ref(tmp_path, rows))

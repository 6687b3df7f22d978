"""``hf:`` folders: dynamic and static int8 through optimize_model; custom code and bad labels refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from modelpress.optimize.errors import DataError, ModelLoadError
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
    assert "10 of 40 eval rows" in r.eval_description  # no calibration file: a seeded quarter set aside

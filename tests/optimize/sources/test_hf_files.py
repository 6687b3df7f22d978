"""The rules an ``hf:`` folder must pass at submit and on the worker, checked torch-free (``hf_files``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelpress.optimize.sources.hf_files import ATTN_IMPLEMENTATIONS, MAX_JSON_BYTES, check_folder

INDEX = "model.safetensors.index.json"
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


def _safetensors(path: Path, tensors: dict[str, int]) -> Path:
    """A real safetensors file (F32 tensors of the given lengths, zeros) written without torch."""
    header, offset = {}, 0
    for name, n in tensors.items():
        header[name] = {"dtype": "F32", "shape": [n], "data_offsets": [offset, offset + 4 * n]}
        offset += 4 * n
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * offset)
    return path


def _sharded_folder(root: Path, **config: object) -> Path:
    """What save_pretrained(max_shard_size=...) writes: config, two shards, their index, a tokenizer config."""
    folder = root / "bert"
    folder.mkdir(parents=True)
    cfg = {"model_type": "bert", "architectures": ["BertForSequenceClassification"], "num_labels": 3, **config}
    (folder / "config.json").write_text(json.dumps(cfg))
    _safetensors(folder / SHARDS[0], {"bert.embeddings.word_embeddings.weight": 8})
    _safetensors(folder / SHARDS[1], {"classifier.weight": 4, "classifier.bias": 2})
    _write_index(folder, {"bert.embeddings.word_embeddings.weight": SHARDS[0], "classifier.weight": SHARDS[1],
                          "classifier.bias": SHARDS[1]})
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                              "backend": "tokenizers", "model_max_length": 16}))
    (folder / "tokenizer.json").write_text("{}")
    return folder


def _write_index(folder: Path, weight_map: object, name: str = INDEX) -> None:
    (folder / name).write_text(json.dumps({"metadata": {"total_size": 56}, "weight_map": weight_map}))


def _config(folder: Path, **entries: object) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **entries}))


def test_a_sharded_folder_as_save_pretrained_writes_it_passes_and_returns_its_config(tmp_path):
    found = check_folder(_sharded_folder(tmp_path))
    assert found.problems == []
    assert found.config is not None and found.config["num_labels"] == 3


@pytest.mark.parametrize("value, why", [
    ("{outside}", "an absolute path to another team's weights"),
    ("../other-team/model.safetensors", "a path climbing out of the folder"),
    ("sub/../../model.safetensors", "a path with a separator"),
    ("..\\other-team\\model.safetensors", "a Windows-style path"),
    ("model-00001\x00.safetensors", "a NUL byte"),
    ("", "an empty name"),
    (7, "not a string"),
])
def test_a_shard_index_naming_a_file_outside_the_folder_is_refused_naming_tensor_and_path(tmp_path, value, why):
    outside = _safetensors(tmp_path / "other-team.safetensors", {"classifier.weight": 4})
    folder = _sharded_folder(tmp_path)
    value = str(outside) if value == "{outside}" else value
    _write_index(folder, {"bert.embeddings.word_embeddings.weight": SHARDS[0], "classifier.weight": value,
                          "classifier.bias": value})
    (problem,) = check_folder(folder).problems
    assert f"{INDEX} maps tensor 'classifier.weight' to {value!r}" in problem, why
    assert "not a file name inside the folder (and 1 more)" in problem
    assert "\n" not in problem


def test_a_shard_named_but_missing_is_refused_naming_the_shard(tmp_path):
    folder = _sharded_folder(tmp_path)
    (folder / SHARDS[1]).unlink()
    assert check_folder(folder).problems == [
        f"HF model folder {folder}: {INDEX} names shard {SHARDS[1]!r}, which is not in the folder (copy every shard "
        "save_pretrained wrote)"]


def test_an_index_naming_a_file_that_is_not_safetensors_is_refused(tmp_path):
    folder = _sharded_folder(tmp_path)
    (folder / "notes.safetensors").write_bytes(b"\x80\x04K\x01.")  # a pickle wearing the suffix
    _write_index(folder, {"a": "config.json", "b": "notes.safetensors"})
    problems = check_folder(folder).problems
    assert any("names 'config.json' as a shard, which is not a .safetensors file" in p for p in problems), problems
    assert any("names shard 'notes.safetensors', which is not a safetensors file" in p for p in problems), problems


@pytest.mark.parametrize("body, expected", [
    ("not json", "is not valid JSON"),
    ("[1, 2]", "is not a JSON object"),
    ('{"weight_map": {}}', "has no weight_map"),
    ("[" * 100_000 + "]" * 100_000, "is not valid JSON"),
])
def test_an_index_that_is_not_a_weight_map_is_refused(tmp_path, body, expected):
    folder = _sharded_folder(tmp_path)
    (folder / INDEX).write_text(body)
    (problem,) = check_folder(folder).problems
    assert INDEX in problem and expected in problem


def test_every_shard_index_is_checked_not_only_the_default_name(tmp_path):
    folder = _sharded_folder(tmp_path)
    _write_index(folder, {"w": "/srv/elsewhere.safetensors"}, name="model.fp16.safetensors.index.json")
    (problem,) = check_folder(folder).problems
    assert "model.fp16.safetensors.index.json maps tensor 'w' to '/srv/elsewhere.safetensors'" in problem


def test_an_oversized_index_is_refused_before_it_is_parsed(tmp_path):
    folder = _sharded_folder(tmp_path)
    with (folder / INDEX).open("wb") as f:
        f.truncate(MAX_JSON_BYTES + 1)
    (problem,) = check_folder(folder).problems
    assert f"{INDEX} is {MAX_JSON_BYTES + 1} bytes, over the limit of {MAX_JSON_BYTES} bytes" in problem


@pytest.mark.parametrize("key", ["attn_implementation", "_attn_implementation"])
@pytest.mark.parametrize("value", ["kernels-community/flash-attn", "kernels-community/flash-attn@v2:fwd",
                                   "flash_attention_2", "flash_attention_3", "flex_attention", "paged|eager", {}])
def test_an_attention_implementation_outside_the_allow_list_is_refused(tmp_path, key, value):
    folder = _sharded_folder(tmp_path)
    _config(folder, **{key: value})
    (problem,) = check_folder(folder).problems
    assert f"config.json sets {key} to {value!r}; allowed: 'eager', 'sdpa' (or none)" in problem


def test_a_hub_kernel_in_a_nested_sub_config_is_refused_naming_where(tmp_path):
    folder = _sharded_folder(tmp_path)
    _config(folder, text_config={"model_type": "bert", "attn_implementation": "kernels-community/flash-attn"},
            vision_config={"experts_implementation": "deepgemm"})
    problems = check_folder(folder).problems
    assert len(problems) == 2
    assert "sets text_config.attn_implementation to 'kernels-community/flash-attn'" in problems[0]
    assert "sets vision_config.experts_implementation to 'deepgemm'" in problems[1]


@pytest.mark.parametrize("value", [*ATTN_IMPLEMENTATIONS, None])
def test_the_built_in_attention_implementations_are_accepted(tmp_path, value):
    folder = _sharded_folder(tmp_path)
    _config(folder, attn_implementation=value, text_config={"attn_implementation": value})
    assert check_folder(folder).problems == []


@pytest.mark.parametrize("key, value, expected", [
    ("auto_map", {"AutoModel": "modeling_x.X"}, "never runs a model's own code"),
    ("custom_pipelines", {"text-classification": {"impl": "pipe.P"}}, "custom pipeline code"),
    ("trust_remote_code", True, "never runs a model's own code"),
    ("quantization_config", {"quant_method": "eetq"}, "already-quantized model"),
    ("kernel_config", {"kernel_mapping": {}}, "hub kernels"),
    ("use_kernels", True, "hub kernels"),
    ("fusion_config", {"qkv": True}, "module classes swapped at load"),
    ("transformers_weights", "/srv/other/model.safetensors", "names the weights file itself"),
])
def test_config_entries_that_run_or_fetch_code_are_refused_at_any_depth(tmp_path, key, value, expected):
    top, nested = _sharded_folder(tmp_path / "top"), _sharded_folder(tmp_path / "nested")
    _config(top, **{key: value})
    _config(nested, text_config={"model_type": "bert", key: value})
    (at_top,) = check_folder(top).problems
    (deep,) = check_folder(nested).problems
    assert f"config.json has {key}: " in at_top and expected in at_top
    assert f"config.json has text_config.{key}: " in deep


def test_label_names_are_data_not_config_entries(tmp_path):
    folder = _sharded_folder(tmp_path)
    _config(folder, id2label={"0": "auto_map", "1": "quantization_config"},
            label2id={"auto_map": 0, "quantization_config": 1})
    assert check_folder(folder).problems == []


def test_a_tokenizer_config_with_auto_map_is_refused(tmp_path):
    folder = _sharded_folder(tmp_path)
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_evil.Evil", None]}}))
    (problem,) = check_folder(folder).problems
    assert "tokenizer_config.json has auto_map: custom tokenizer code" in problem


@pytest.mark.parametrize("where", ["tokenizer_config.json", "config.json"])
@pytest.mark.parametrize("value", ["org/evil-tokenizer", "tokenization_evil.EvilTokenizer", "../x", ["BertTokenizer"]])
def test_a_tokenizer_class_that_is_not_a_class_name_is_refused(tmp_path, where, value):
    folder = _sharded_folder(tmp_path)
    doc = json.loads((folder / where).read_text())
    (folder / where).write_text(json.dumps({**doc, "tokenizer_class": value}))
    (problem,) = check_folder(folder).problems
    assert f"{where} sets tokenizer_class to {value!r}, which is not a tokenizer class name" in problem


@pytest.mark.parametrize("key, value, refused", [
    ("tokenizer_file", "/home/someone/.cache/huggingface/tokenizer.json", True),
    ("vocab_file", "../other-team/vocab.txt", True),
    ("merges_file", ["merges.txt", "/etc/passwd"], True),
    ("vocab_file", "vocab.txt", False),      # a plain name is resolved inside the folder
    ("tokenizer_file", None, False),
])
def test_tokenizer_files_named_outside_the_folder_are_refused(tmp_path, key, value, refused):
    folder = _sharded_folder(tmp_path)
    doc = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**doc, key: value}))
    problems = check_folder(folder).problems
    assert bool(problems) is refused, problems
    if refused:
        assert f"tokenizer_config.json sets {key} to " in problems[0] and "not a file inside the folder" in problems[0]


def test_a_peft_adapter_and_a_distributed_checkpoint_are_refused(tmp_path):
    folder = _sharded_folder(tmp_path)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/srv/other-team/model"}))
    _safetensors(folder / "shard-00000-model-00001-of-00001.safetensors", {"w": 1})
    problems = check_folder(folder).problems
    assert any("holds adapter_config.json (a PEFT adapter" in p for p in problems), problems
    assert any("holds shard-00000-model-00001-of-00001.safetensors, a distributed checkpoint" in p
               for p in problems), problems


def test_a_folder_with_only_pickled_weights_or_shards_without_their_index_is_refused(tmp_path):
    folder = _sharded_folder(tmp_path)
    (folder / INDEX).unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    (problem,) = check_folder(folder).problems
    assert "has no model.safetensors (nor a model.safetensors.index.json beside its shards)" in problem
    assert "only pytorch_model.bin, a pickle format" in problem


@pytest.mark.parametrize("body, expected", [
    ("{", "config.json is not valid JSON"),
    ('"bert"', "config.json is not a JSON object"),
    ('{"a": ' * 50 + "1" + "}" * 50, "config.json nests deeper than 32 levels"),
])
def test_an_unreadable_config_is_one_line_naming_it(tmp_path, body, expected):
    folder = _sharded_folder(tmp_path)
    (folder / "config.json").write_text(body)
    problems = check_folder(folder).problems
    assert expected in problems[0] and all("\n" not in p for p in problems)


def test_checking_a_folder_imports_neither_torch_nor_transformers(tmp_path):
    folder = _sharded_folder(tmp_path)
    _config(folder, attn_implementation="kernels-community/flash-attn")
    code = ("import sys; from modelpress.optimize.sources.hf_files import check_folder; "
            f"print(len(check_folder({str(folder)!r}).problems), "
            "[m for m in ('torch', 'transformers', 'huggingface_hub') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "1 []", out.stdout + out.stderr


def test_offline_mode_is_forced_over_the_environment_and_an_already_imported_hub_client():
    code = ("import huggingface_hub.constants as c; assert not c.HF_HUB_OFFLINE; "
            "from modelpress.optimize.hf_env import force_offline; force_offline(); import os; "
            "print(c.HF_HUB_OFFLINE, c.is_offline_mode(), c.HF_HUB_DISABLE_TELEMETRY, "
            "os.environ['HF_HUB_OFFLINE'], os.environ['TRANSFORMERS_OFFLINE'], os.environ['USE_HUB_KERNELS'])")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update({"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "USE_HUB_KERNELS": "1"})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                         check=True)
    assert out.stdout.split() == ["True", "True", "True", "1", "1", "0"], out.stdout + out.stderr

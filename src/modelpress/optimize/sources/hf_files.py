"""The files of an ``hf:`` model folder, checked without torch or transformers: one set of rules for both sides.

``submit_hf`` runs ``check_folder`` at submit; ``sources.hf`` runs it again on the worker, on the folder rebuilt
from the store, before transformers opens any file of it. Every rule below closes a way for a folder to
make transformers run, fetch or read something that is not the folder's own weights:

- ``config.json`` (and every sub-config nested in it, e.g. ``text_config``):
  ``auto_map`` / ``custom_pipelines`` / ``trust_remote_code`` (Python code shipped with the model);
  ``quantization_config`` (a quantizer, some of which load compiled kernels from the hub);
  ``kernel_config`` / ``use_kernels`` (hub kernels); ``fusion_config`` (module classes swapped at load);
  ``transformers_weights`` (names its own weights file). ``attn_implementation`` may name a hub kernel
  repository (``kernels-community/flash-attn``), and ``flash_attention_*`` falls back to one when the
  ``flash_attn`` package is missing, so it must be one of ``ATTN_IMPLEMENTATIONS``; ``experts_implementation``
  likewise (``deepgemm`` and ``sonicmoe`` are hub kernels). ``tokenizer_class`` must be a class name,
  not a path.
- ``*.safetensors.index.json`` (sharded weights): transformers joins each ``weight_map`` value to the
  folder with ``os.path.join``, so an absolute path wins over the folder and ``..`` climbs out of it: a
  shard index could load another team's staged weights into this user's artifact. Values must be plain
  ``.safetensors`` file names of files beside the index.
- ``tokenizer_config.json``: no ``auto_map`` (tokenizer code); every ``*_file`` entry a plain name of a
  file in the folder, or null.
- ``architectures``: the model's task must be one modelpress judges (``hf_tasks``): a causal LM or a tagger
  is refused with its task named, never judged as an embedder.
- ``adapter_config.json`` (a PEFT adapter: transformers would load the base model it names, from
  anywhere) and distributed-checkpoint shards (``shard-…-model-…-of-….safetensors``, read by another
  loader) are refused.

The values accepted are allow-lists; a key that is merely unknown is left to transformers, which only
reads it as data. Each problem is one line naming the file, the entry and what to do.

Example:
    >>> import json, tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "config.json").write_text(json.dumps({"model_type": "bert", "attn_implementation": "org/kernel"}))
    >>> check_folder(d).problems[0]  # doctest: +ELLIPSIS
    "HF model folder ...: config.json sets attn_implementation to 'org/kernel'; allowed: 'eager', 'sdpa'..."
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelpress.optimize.sources.hf_tasks import task_problem

# Every JSON file of the folder we read; a real config.json or shard index is well under 1 MiB.
MAX_JSON_BYTES = 10 * 1024 * 1024
# Built into transformers and run by torch alone. Not allowed: flash_attention_2/3/4 (need a CUDA package
# and, without it, fall back to a hub kernel), flex_attention (compiles code at load; not needed on CPU),
# paged|* (generation caches), and any "org/repo" hub kernel.
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
# Mixture-of-experts dispatch built into transformers; deepgemm and sonicmoe are hub kernels.
EXPERTS_IMPLEMENTATIONS = ("eager", "batched_mm", "grouped_mm")
INDEX_SUFFIX = ".safetensors.index.json"
# What save_pretrained writes: model.safetensors, model-00001-of-00002.safetensors, model.fp16-….safetensors.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_DISTRIBUTED_SHARD = re.compile(r"shard-[0-9]{5}-model-[0-9]{5}-of-[0-9]{5}\.safetensors")
_REFUSED_KEYS = {
    "auto_map": "custom model code in the folder; modelpress never runs a model's own code (no "
                "trust_remote_code): save a model of a built-in transformers architecture",
    "custom_pipelines": "custom pipeline code; modelpress never runs a model's own code (no trust_remote_code): "
                        "drop the entry",
    "trust_remote_code": "modelpress never runs a model's own code: drop the entry",
    "quantization_config": "an already-quantized model (its quantizer may load compiled kernels from the hub); "
                           "give modelpress the float model, it quantizes it",
    "kernel_config": "hub kernels; modelpress runs only the layers built into transformers: drop the entry",
    "use_kernels": "hub kernels; modelpress runs only the layers built into transformers: drop the entry",
    "fusion_config": "module classes swapped at load; modelpress measures the model as saved: drop the entry",
    "transformers_weights": "it names the weights file itself; save with save_pretrained (model.safetensors "
                            "or a model.safetensors.index.json beside its shards)",
}
_IMPLEMENTATION_KEYS = {"attn_implementation": ATTN_IMPLEMENTATIONS, "_attn_implementation": ATTN_IMPLEMENTATIONS,
                        "experts_implementation": EXPERTS_IMPLEMENTATIONS,
                        "_experts_implementation": EXPERTS_IMPLEMENTATIONS}
# Mappings whose keys are the user's label names, not config keys: never read as entries.
_LABEL_MAPS = ("id2label", "label2id")
_MAX_DEPTH = 32


class FolderFileError(ValueError):
    """A file of the folder that cannot be read as what it should be (the message says which and why)."""


@dataclass
class FolderCheck:
    """What ``check_folder`` found: ``config`` (None when unreadable) and the problems, one line each."""

    config: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)


def read_json_object(path: Path, *, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """A JSON object from ``path``, size-bounded; ``FolderFileError`` (one line) when it is not one.

    Example:
        >>> read_json_object(Path("/nonexistent/config.json"))
        Traceback (most recent call last):
        ...
        modelpress.optimize.sources.hf_files.FolderFileError: config.json could not be read (FileNotFoundError)
    """
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise FolderFileError(f"{path.name} is {size} bytes, over the limit of {max_bytes} bytes")
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except FolderFileError:
        raise
    except OSError as e:
        raise FolderFileError(f"{path.name} could not be read ({type(e).__name__})") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise FolderFileError(f"{path.name} is not valid JSON ({str(e)[:120] or type(e).__name__})") from None
    if not isinstance(doc, dict):
        raise FolderFileError(f"{path.name} is not a JSON object")
    return doc


def is_plain_file_name(name: Any) -> bool:
    """Whether ``name`` names a file directly inside a folder: no separator, no ``..``, not absolute, no NUL.

    Example:
        >>> [is_plain_file_name(n) for n in ("model-00001-of-00002.safetensors", "/srv/w.safetensors",
        ...                                   "../w.safetensors", "sub/w.safetensors", ".hidden")]
        [True, False, False, False, False]
    """
    return isinstance(name, str) and _PLAIN_NAME.fullmatch(name) is not None and ".." not in name


def check_folder(folder: str | Path) -> FolderCheck:
    """Every rule of this module on ``folder``: config, weights files, shard indexes, tokenizer config.

    Reads only JSON files and safetensors headers (no torch, no transformers). Not checked here: the
    structure of each safetensors file in full and the folder's total size (``submit_hf`` does both at
    submit, with the deployment's limit).

    Example:
        >>> check_folder("/nonexistent").problems
        ['HF model folder /nonexistent does not exist (expected a folder written by save_pretrained)']
    """
    folder = Path(folder)
    where = f"HF model folder {folder}"
    if not folder.is_dir():
        return FolderCheck(None, [f"{where} does not exist (expected a folder written by save_pretrained)"])
    if not (folder / "config.json").is_file():
        return FolderCheck(None, [f"{where} has no config.json (expected a folder written by save_pretrained)"])
    try:
        config: dict[str, Any] | None = read_json_object(folder / "config.json")
    except FolderFileError as e:
        return FolderCheck(None, [f"{where}: {e}"])
    problems = [f"{where}: {p}" for p in config_problems(config, "config.json")]
    if not isinstance(config.get("model_type"), str):
        problems.append(f"{where}: config.json has no model_type; is it a transformers config?")
    if (task := task_problem(config)) is not None:
        problems.append(f"{where}: {task}")
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    problems += [f"{where} {p}" for p in _weights_problems(names)]
    for name in names:
        if name.endswith(INDEX_SUFFIX):
            problems += [f"{where}: {p}" for p in index_problems(folder / name)]
    problems += [f"{where}: {p}" for p in tokenizer_problems(folder)]
    return FolderCheck(config, problems)


def config_problems(config: dict[str, Any], name: str = "config.json") -> list[str]:
    """Entries of a config (and its nested sub-configs) that make transformers run or fetch code.

    Example:
        >>> config_problems({"model_type": "llava", "text_config": {"attn_implementation": "sdpa",
        ...                                                          "auto_map": {}}})[0][:52]
        'config.json has text_config.auto_map: custom model c'
    """
    problems: list[str] = []

    def walk(node: Any, path: str, depth: int) -> None:
        if depth > _MAX_DEPTH:
            problems.append(f"{name} nests deeper than {_MAX_DEPTH} levels at {path}; is it a transformers config?")
            return
        if isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]", depth + 1)
            return
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            entry = f"{path}.{key}" if path else str(key)
            if key in _REFUSED_KEYS:
                problems.append(f"{name} has {entry}: {_REFUSED_KEYS[key]}")
            elif key in _IMPLEMENTATION_KEYS:
                allowed = _IMPLEMENTATION_KEYS[key]
                if value is not None and value not in allowed:
                    problems.append(f"{name} sets {entry} to {_short(value)}; allowed: "
                                    f"{', '.join(repr(a) for a in allowed)} (or none): other values load "
                                    "kernels from the hub or from packages modelpress does not run")
            elif key == "tokenizer_class":
                if value is not None and not (isinstance(value, str) and _CLASS_NAME.fullmatch(value)):
                    problems.append(f"{name} sets {entry} to {_short(value)}, which is not a tokenizer class name "
                                    "of transformers; save the tokenizer with tokenizer.save_pretrained")
            elif key not in _LABEL_MAPS:
                walk(value, entry, depth + 1)

    walk(config, "", 0)
    return problems


def index_problems(index: Path) -> list[str]:
    """What is wrong with a shard index (``model.safetensors.index.json``), one line per problem.

    Its ``weight_map`` (tensor name → file) may name only ``.safetensors`` files beside the index.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); i = d / "model.safetensors.index.json"
        >>> _ = i.write_text('{"weight_map": {"w": "/srv/other-team/model.safetensors"}}')
        >>> index_problems(i)[0]  # doctest: +ELLIPSIS
        "model.safetensors.index.json maps tensor 'w' to '/srv/other-team/model.safetensors', which is not ..."
    """
    try:
        doc = read_json_object(index)
    except FolderFileError as e:
        return [str(e)]
    weight_map = doc.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        return [f"{index.name} has no weight_map (tensor name → shard file); save with save_pretrained"]
    outside = [(k, v) for k, v in weight_map.items() if not is_plain_file_name(v)]
    if outside:
        tensor, value = outside[0]
        more = f" (and {len(outside) - 1} more)" if len(outside) > 1 else ""
        return [f"{index.name} maps tensor {_short(tensor)} to {_short(value)}, which is not a file name inside "
                f"the folder{more}; a shard index may only name .safetensors files beside it "
                "(save with save_pretrained)"]
    problems = []
    for shard in sorted(set(weight_map.values())):
        path = index.parent / shard
        if not shard.endswith(".safetensors"):
            problems.append(f"{index.name} names {shard!r} as a shard, which is not a .safetensors file")
        elif not path.is_file():
            problems.append(f"{index.name} names shard {shard!r}, which is not in the folder (copy every shard "
                            "save_pretrained wrote)")
        elif (why := _not_safetensors(path)) is not None:
            problems.append(f"{index.name} names shard {shard!r}, which is not a safetensors file ({why})")
    return problems


def tokenizer_problems(folder: Path) -> list[str]:
    """What in ``tokenizer_config.json`` would load tokenizer code or a file from outside the folder.

    Example:
        >>> tokenizer_problems(Path("/nonexistent"))
        []
    """
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return []
    try:
        doc = read_json_object(path)
    except FolderFileError as e:
        return [str(e)]
    problems = []
    if "auto_map" in doc:
        problems.append(f"{path.name} has auto_map: custom tokenizer code in the folder; modelpress never runs a "
                        "model's own code (no trust_remote_code): save a tokenizer class built into transformers")
    for key, value in doc.items():
        if key == "tokenizer_class":
            problems += config_problems({key: value}, path.name)
        elif str(key).endswith(("_file", "_files")) and value is not None:
            values = value if isinstance(value, list) else [value]
            # A plain name stays inside the folder (transformers resolves it there, or finds nothing);
            # an absolute or ../ path would be opened as it is.
            bad = [v for v in values if not is_plain_file_name(v)]
            if bad:
                problems.append(f"{path.name} sets {key} to {_short(bad[0])}, which is not a file inside the "
                                "folder; save the tokenizer again with tokenizer.save_pretrained(folder)")
    return problems


def _weights_problems(names: list[str]) -> list[str]:
    """Sentences that follow "HF model folder X": which weights files are missing or not ours to load."""
    problems = []
    if "model.safetensors" not in names and "model.safetensors.index.json" not in names:
        pickled = sorted(n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt")))
        problems.append("has no model.safetensors (nor a model.safetensors.index.json beside its shards)"
                        + (f"; only {', '.join(pickled)}, a pickle format modelpress does not read" if pickled else "")
                        + ": save with save_pretrained(..., safe_serialization=True)")
    if "adapter_config.json" in names:
        problems.append("holds adapter_config.json (a PEFT adapter: transformers would load the base model it "
                        "names, from anywhere); merge the adapter into the model and save_pretrained the result")
    distributed = [n for n in names if _DISTRIBUTED_SHARD.fullmatch(n)]
    if distributed:
        problems.append(f"holds {distributed[0]}, a distributed checkpoint shard, which modelpress does not load; "
                        "save the model with save_pretrained from one process")
    return problems


def _not_safetensors(path: Path) -> str | None:
    """Why ``path`` is not a safetensors file (its 8-byte header length and JSON header), or None."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return "shorter than its 8-byte header length"
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 * 1024 * 1024):
                return f"its header claims {n} bytes, the file has {size - 8}"
            header = json.loads(f.read(n))
    except OSError as e:
        return type(e).__name__
    except (ValueError, RecursionError):
        return "its header is not JSON"
    return None if isinstance(header, dict) else "its header is not a JSON object"


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = ["ATTN_IMPLEMENTATIONS", "EXPERTS_IMPLEMENTATIONS", "FolderCheck", "FolderFileError", "MAX_JSON_BYTES",
           "check_folder", "config_problems", "index_problems", "is_plain_file_name", "read_json_object",
           "tokenizer_problems"]

"""The file of a torch weight-only causal LM (``lm.weight_only``): one safetensors file written atomically, and
its reload, which rebuilds a built-in transformers architecture from the stored config (never remote code)
and refuses a file whose metadata is missing or does not fit.

Example:
    >>> qm, meta = quantize_lm(model, bits=4, group_size=32)                # doctest: +SKIP
    >>> save_quantized(qm, meta, "model-int4.safetensors")                  # doctest: +SKIP
    >>> same = load_quantized("model-int4.safetensors")                     # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelpress.errors import ModelLoadError, is_task_control

from modelpress.optimize.lm.weight_only_layers import (DTYPES, FORMAT, METADATA_KEY, VERSION, QuantizedEmbedding,
                                                       WeightOnlyLinear, dtype_name, is_conv1d, set_module,
                                                       share_embedding)


def _float_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def save_quantized(model: nn.Module, meta: dict[str, Any], path: str | os.PathLike[str]) -> int:
    """Write a ``quantize_lm`` model to ONE safetensors file (atomically); return its size in bytes.

    Tensors: the model's state dict (codes, bf16 scales/zeros, float rest); a head sharing a tied int8
    embedding is stored once, under the embedding. Metadata ``modelpress.weight_only``: ``meta`` plus the
    model's config, its class, float dtype and attention implementation, all that ``load_quantized`` needs.

    Example:
        >>> qm, meta = quantize_lm(model, bits=8, group_size=None)              # doctest: +SKIP
        >>> save_quantized(qm, meta, tmp_path / "q.safetensors")                # doctest: +SKIP
        124352
    """
    if meta.get("format") != FORMAT or not isinstance(meta.get("modules"), dict):
        raise ValueError("meta is not a quantize_lm result")
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_json_string"):
        raise TypeError("expected a transformers model with a config")
    dropped: set[str] = set()
    for name, rec in meta["modules"].items():
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"meta names module {name!r}, which the model does not have") from None
        want = QuantizedEmbedding if rec.get("kind") == "embedding" else WeightOnlyLinear
        if not isinstance(m, want):
            raise ValueError(f"module {name!r} is a {type(m).__name__}, meta says {rec.get('kind')}")
        if rec.get("tied_to"):
            dropped.update(f"{name}.{b}" for b in ("qweight", "scale", "zero"))
    state = {k: v for k, v in model.state_dict().items() if k not in dropped}
    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        v = v.detach().cpu()
        storage = v.untyped_storage().data_ptr()
        # safetensors refuses tensors sharing memory; any other alias (a float tie, which transformers
        # re-makes when it builds the model at load) is stored as its own copy.
        tensors[k] = v.clone().contiguous() if storage in seen else v.contiguous()
        seen.add(storage)
    full = dict(meta)
    full["config"] = json.loads(config.to_json_string(use_diff=False))
    full["model_class"] = type(model).__name__
    full["float_dtype"] = dtype_name(_float_dtype(model))
    full["attn_implementation"] = getattr(config, "_attn_implementation", None)
    target = Path(path)
    _atomic_save_file(tensors, {METADATA_KEY: json.dumps(full, sort_keys=True)}, target)
    return os.stat(target).st_size


def _atomic_save_file(tensors: dict[str, torch.Tensor], metadata: dict[str, str], target: Path) -> None:
    """safetensors ``save_file`` to a temp file beside ``target``, fsync, then ``os.replace``: a reader never
    sees half a file. Written from the tensors directly (``safetensors.torch.save`` would first build the
    whole file in memory, a second copy of the model). Modes as every modelpress file: 0640, folders 0750."""
    import tempfile

    from safetensors.torch import save_file

    from modelpress.filemodes import make_private_dirs, make_private_file

    make_private_dirs(target.parent)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        make_private_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_quantized_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata ``save_quantized`` wrote (options, modules, config); ``ModelLoadError`` when absent.

    Example:
        >>> read_quantized_meta(tmp_path / "q.safetensors")["bits"]              # doctest: +SKIP
        4
    """
    from safetensors import SafetensorError, safe_open

    from modelpress.optimize.sources.weights_file import check_safetensors

    p = Path(path)
    where = f"weight-only LM file {p.name}"
    if not p.is_file():
        raise ModelLoadError(f"{where} does not exist")
    check_safetensors(p)
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(f"{where} cannot be read as safetensors ({e})") from None
    if raw is None:
        raise ModelLoadError(f"{where} has no '{METADATA_KEY}' metadata: it was not written by save_quantized "
                             "(or its header was rewritten); quantize the model again")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise ModelLoadError(f"{where}: its '{METADATA_KEY}' metadata is not JSON") from None
    _check_meta(meta, where)
    return meta


def _check_meta(meta: Any, where: str) -> None:
    def bad(why: str) -> ModelLoadError:
        return ModelLoadError(f"{where}: metadata {why}; quantize the model again with quantize_lm/save_quantized")

    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise bad(f"is not {FORMAT}")
    if meta.get("version") != VERSION:
        raise bad(f"has version {meta.get('version')!r}; this modelpress reads version {VERSION}")
    if meta.get("bits") not in (4, 8):
        raise bad(f"has bits {meta.get('bits')!r} (expected 4 or 8)")
    if meta.get("compute_dtype") not in DTYPES or meta.get("float_dtype") not in DTYPES:
        raise bad("names no known compute_dtype / float_dtype")
    if not isinstance(meta.get("config"), dict) or not isinstance(meta["config"].get("model_type"), str):
        raise bad("holds no model config with a model_type")
    if not isinstance(meta.get("model_class"), str):
        raise bad("names no model class")
    modules = meta.get("modules")
    if not isinstance(modules, dict):
        raise bad("lists no quantized modules")
    for name, rec in modules.items():
        ok = (isinstance(rec, dict) and rec.get("kind") in ("linear", "conv1d", "embedding")
              and rec.get("bits") in (4, 8)
              and isinstance(rec.get("in_features"), int) and isinstance(rec.get("out_features"), int)
              and rec["in_features"] > 0 and rec["out_features"] > 0
              and (rec.get("group_size") is None or (isinstance(rec["group_size"], int) and rec["group_size"] > 0
                                                      and rec["in_features"] % rec["group_size"] == 0))
              and isinstance(rec.get("bias"), bool)
              and (rec.get("tied_to") is None or rec["tied_to"] in modules)
              and rec.get("out_dtype", "float32") in DTYPES)
        if not ok:
            raise bad(f"describes module {name!r} inconsistently")
        if rec["kind"] == "embedding" and rec["bits"] != 8:
            raise bad(f"has an int{rec['bits']} embedding {name!r}; only int8 embeddings exist")


def load_quantized(path: str | os.PathLike[str], *, compute_dtype: torch.dtype | None = None,
                   backend: str = "auto") -> nn.Module:
    """Rebuild a ``save_quantized`` model: architecture from the stored config, quantized modules, tensors.

    The config's ``model_type`` must be a causal LM built into transformers (no ``trust_remote_code``, no
    config entry that loads code or hub kernels); every tensor must be exactly the one the rebuilt model
    expects (names, shapes, dtypes); otherwise ``ModelLoadError`` says what does not fit. ``compute_dtype``
    overrides the stored one (e.g. ``torch.float32`` for exact, slower matmuls). Returned in eval mode,
    kernels packed for this host.

    Example:
        >>> m = load_quantized(tmp_path / "q.safetensors")                       # doctest: +SKIP
        >>> TorchLM(m).logits(ids, torch.ones_like(ids)).shape                    # doctest: +SKIP
        torch.Size([1, 8, 256])
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from modelpress.optimize.hf_env import prepare_transformers
    from modelpress.optimize.sources.hf_files import ATTN_IMPLEMENTATIONS, config_problems

    p = Path(path)
    where = f"weight-only LM file {p.name}"
    meta = read_quantized_meta(p)
    cfg_dict = dict(meta["config"])
    model_type = cfg_dict["model_type"]
    problems = config_problems(cfg_dict, "stored config")
    if problems:
        raise ModelLoadError(f"{where}: " + "; ".join(problems))
    attn = meta.get("attn_implementation")
    if attn is not None and attn not in ATTN_IMPLEMENTATIONS:
        raise ModelLoadError(f"{where}: attention implementation {attn!r} is not one of {ATTN_IMPLEMENTATIONS}")

    prepare_transformers()
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(f"{where}: model_type {model_type!r} is not a causal LM built into transformers; "
                             "modelpress never runs a model's own code")
    float_dtype = DTYPES[meta["float_dtype"]]
    cdtype = compute_dtype if compute_dtype is not None else DTYPES[meta["compute_dtype"]]
    try:
        cfg = CONFIG_MAPPING[model_type].from_dict(cfg_dict)
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=False, dtype=float_dtype,
                                                 **({"attn_implementation": attn} if attn else {}))
    except Exception as e:  # noqa: BLE001 - any failure to build from a stored config is the file's fault
        if is_task_control(e):
            raise
        raise ModelLoadError(f"{where}: its config does not build a {model_type} model "
                             f"({type(e).__name__}: {e})") from None
    if type(model).__name__ != meta["model_class"]:
        raise ModelLoadError(f"{where}: config builds {type(model).__name__}, the file was saved from "
                             f"{meta['model_class']}")

    modules: dict[str, dict[str, Any]] = meta["modules"]
    for name, rec in modules.items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise ModelLoadError(f"{where}: metadata names module {name!r}, "
                                 f"which {meta['model_class']} lacks") from None
        _install(model, name, old, rec, where, cdtype, backend)
    for name, rec in modules.items():
        if rec.get("tied_to"):
            head, emb = model.get_submodule(name), model.get_submodule(rec["tied_to"])
            if not (isinstance(head, WeightOnlyLinear) and isinstance(emb, QuantizedEmbedding)
                    and head.bits == 8 and head.group_size == emb.embedding_dim
                    and (head.out_features, head.in_features) == (emb.num_embeddings, emb.embedding_dim)):
                raise ModelLoadError(f"{where}: metadata ties {name!r} to {rec['tied_to']!r}, which do not fit")

    shared = {f"{n}.{b}" for n, r in modules.items() if r.get("tied_to") for b in ("qweight", "scale", "zero")}
    expected = {k: v for k, v in model.state_dict().items() if k not in shared}
    try:
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(f"{where} cannot be read as safetensors ({e})") from None
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ModelLoadError(f"{where}: tensors do not fit its metadata: missing {missing[:5]}, "
                             f"unexpected {extra[:5]}")
    for k, want in expected.items():
        got = tensors[k]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ModelLoadError(f"{where}: tensor {k} is {got.dtype} {tuple(got.shape)}, the model expects "
                                 f"{want.dtype} {tuple(want.shape)}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise ModelLoadError(f"{where}: tensor {k} contains NaN or Inf")
    model.load_state_dict(tensors, strict=False)
    for name, rec in modules.items():
        if rec.get("tied_to"):
            share_embedding(model.get_submodule(name), model.get_submodule(rec["tied_to"]))
    model.eval()
    for m in model.modules():
        if isinstance(m, WeightOnlyLinear):
            m.prepare()
    return model


def _install(model: nn.Module, name: str, old: nn.Module, rec: dict[str, Any], where: str,
             cdtype: torch.dtype, backend: str) -> None:
    in_f, out_f = rec["in_features"], rec["out_features"]
    out_dtype = DTYPES[rec.get("out_dtype", "float32")]
    if rec["kind"] == "embedding":
        fits = isinstance(old, nn.Embedding) and (old.num_embeddings, old.embedding_dim) == (out_f, in_f)
        new: nn.Module = QuantizedEmbedding(out_f, in_f, out_dtype=out_dtype)
    else:
        if rec["kind"] == "conv1d":
            fits = is_conv1d(old) and tuple(old.weight.shape) == (in_f, out_f)
        else:
            fits = isinstance(old, nn.Linear) and (old.in_features, old.out_features) == (in_f, out_f)
        fits = fits and (getattr(old, "bias", None) is not None) == rec["bias"]
        try:
            new = WeightOnlyLinear(in_f, out_f, bits=rec["bits"], group_size=rec["group_size"], bias=rec["bias"],
                                   compute_dtype=cdtype, backend=backend,
                                   out_dtype=out_dtype)
        except ValueError as e:
            raise ModelLoadError(f"{where}: module {name!r}: {e}") from None
    if not fits:
        raise ModelLoadError(f"{where}: metadata says {name!r} is a {rec['kind']} {in_f}->{out_f}"
                             f"{' with bias' if rec.get('bias') else ''}; the architecture has "
                             f"{type(old).__name__} {tuple(getattr(old, 'weight', torch.empty(0)).shape)}")
    set_module(model, name, new)


__all__ = ["load_quantized", "read_quantized_meta", "save_quantized"]

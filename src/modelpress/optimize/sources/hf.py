"""A transformers model from a local folder (``save_pretrained`` output) and JSONL text data.

Loading is offline and code-free: ``local_files_only=True``, never ``trust_remote_code``, a
``config.json`` with ``auto_map`` (custom code) is refused, and weights must be ``model.safetensors``
(a ``pytorch_model.bin`` is a pickle). ``*ForSequenceClassification`` → logits, judged by accuracy when
the JSONL has labels, else by top-1 agreement with the float model; any other architecture → its base
encoder's mean-pooled, L2-normalised embedding, judged by cosine similarity to the float model.

Inputs are the tokenizer's tensors (``input_ids``, ``attention_mask``, ``token_type_ids`` when it makes
them), padded to ``max_length`` (the ref's, else the tokenizer's ``model_max_length`` capped at 512) so
latency is measured at the deployed shape.

Example:
    >>> from modelpress.optimize.sources import get_source, parse_model_ref  # doctest: +SKIP
    >>> ref = parse_model_ref("hf:bert-tiny", data={"eval": "eval.jsonl"})  # doctest: +SKIP
    >>> get_source("hf").load(ref).spec.metric  # doctest: +SKIP
    'accuracy'
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelpress.optimize.errors import DataError, ModelLoadError
from modelpress.optimize.sources.base import LoadedModel, ModelSource
from modelpress.optimize.sources.common import tiled_input
from modelpress.optimize.sources.data import label_indices, make_task_data, read_jsonl
from modelpress.optimize.sources.ref import ModelRef
from modelpress.optimize.zoo import ModelSpec

MAX_CONFIG_BYTES = 1024**2
DEFAULT_MAX_LENGTH_CAP = 512


def _offline() -> None:
    from modelpress.optimize.hf_env import prepare_transformers

    prepare_transformers()


def read_config(folder: str | Path) -> dict[str, Any]:
    """``config.json`` as JSON (no transformers), size-bounded; refuses ``auto_map``.

    Example:
        >>> read_config("models/intent-classifier")["architectures"]  # doctest: +SKIP
        ['BertForSequenceClassification']
    """
    p = Path(folder) / "config.json"
    if not p.is_file():
        raise ModelLoadError(f"HF folder {folder} has no config.json (save the model with save_pretrained)")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelLoadError(f"{p} is over {MAX_CONFIG_BYTES} bytes")
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{p} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{p} is not a JSON object")
    if "auto_map" in cfg:
        raise ModelLoadError(f"HF folder {folder}: config.json has 'auto_map', i.e. it needs custom Python code "
                             "from the folder (trust_remote_code); modelpress never runs a model's own code — "
                             "use a model class that ships with transformers")
    return cfg


def is_classifier(cfg: dict[str, Any]) -> bool:
    return any(str(a).endswith("ForSequenceClassification") for a in cfg.get("architectures") or [])


class SequenceClassifier(nn.Module):
    """(input_ids, attention_mask[, token_type_ids]) → logits: a plain tensor for measuring and quantizing."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kw = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kw).logits


class MeanPooledEncoder(nn.Module):
    """(input_ids, attention_mask[, token_type_ids]) → L2-normalised mean of the last hidden state."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kw = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        h = self.model(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(e, dim=-1)


def as_graph(eager: nn.Module, max_length: int, n_inputs: int) -> tuple[nn.Module, str]:
    """The wrapped model as an exported, re-modularized graph (FX-traceable, so static int8 works).

    transformers models do not trace with FX's symbolic tracer (data-dependent slicing); ``torch.export``
    traces them, and ``export.modularize`` gives back ``nn.Linear`` modules for dynamic int8 and module calls
    for FX static int8. A model that does not export stays eager (dynamic int8 only), which is recorded.
    """
    from modelpress.optimize.sources.export import modularize

    example = tuple(torch.ones(2, max_length, dtype=torch.long) for _ in range(n_inputs))
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with torch.no_grad():
            program = torch.export.export(eager, example, dynamic_shapes=tuple({0: batch} for _ in example))
        return modularize(program.module()), "exported"
    except Exception as e:  # noqa: BLE001 - export failing is a property of the model, not an error
        if type(e).__module__.startswith(("billiard", "celery")):
            raise
        return eager, f"eager (torch.export failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]})"


class HFSource(ModelSource):
    """``hf:FOLDER``: a transformers model saved with ``save_pretrained`` (safetensors)."""

    def check(self, ref: ModelRef) -> list[str]:
        problems = super().check(ref)
        if problems:
            return problems
        try:
            read_config(ref.path or "")
        except ModelLoadError as e:
            return [str(e)]
        if not (Path(ref.path or "") / "model.safetensors").is_file() and not any(
                Path(ref.path or "").glob("model-*.safetensors")):
            problems.append(f"HF folder {ref.path} has no model.safetensors (pickled pytorch_model.bin files are "
                            "not loaded: save with save_pretrained(..., safe_serialization=True))")
        return problems

    def _config(self, folder: str) -> Any:
        read_config(folder)  # refuses auto_map before transformers sees the folder
        _offline()
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        except Exception as e:  # noqa: BLE001 - transformers' errors are many; the message is what matters
            raise ModelLoadError(f"HF folder {folder}: config could not be read ({type(e).__name__}: "
                                 f"{str(e)[:300]})") from None

    def build(self, ref: ModelRef) -> nn.Module:
        """The wrapped architecture from ``config.json`` alone, weights uninitialised-but-seeded."""
        assert ref.path
        cfg = self._config(ref.path)
        _offline()
        from transformers import AutoModel, AutoModelForSequenceClassification

        raw = read_config(ref.path)
        torch.manual_seed(0)
        if is_classifier(raw):
            eager: nn.Module = SequenceClassifier(AutoModelForSequenceClassification.from_config(cfg)).eval()
        else:
            eager = MeanPooledEncoder(AutoModel.from_config(cfg)).eval()
        tok = self.tokenizer(ref.path)
        return as_graph(eager, self._max_length(ref, tok, cfg), len(self._input_names(tok)))[0]

    def _max_length(self, ref: ModelRef, tok: Any, cfg: Any) -> int:
        return ref.max_length or min(int(getattr(tok, "model_max_length", 512) or 512), DEFAULT_MAX_LENGTH_CAP,
                                     int(getattr(cfg, "max_position_embeddings", 512) or 512))

    def _input_names(self, tok: Any) -> list[str]:
        enc = tok(["a"], padding="max_length", max_length=4, truncation=True)
        return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]

    def _load_model(self, folder: str, classifier: bool) -> nn.Module:
        _offline()
        from transformers import AutoModel, AutoModelForSequenceClassification

        cls = AutoModelForSequenceClassification if classifier else AutoModel
        try:
            m = cls.from_pretrained(folder, local_files_only=True, trust_remote_code=False, use_safetensors=True)
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"HF folder {folder}: model could not be loaded ({type(e).__name__}: "
                                 f"{(str(e).splitlines() or [''])[0][:300]})") from None
        m.eval()
        return (SequenceClassifier(m) if classifier else MeanPooledEncoder(m)).eval()

    def tokenizer(self, folder: str) -> Any:
        _offline()
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"HF folder {folder}: tokenizer could not be loaded ({type(e).__name__}: "
                                 f"{str(e)[:300]}); save it beside the model with tokenizer.save_pretrained") from None

    def _encode(self, tok: Any, path: str, max_length: int, label2id: dict[str, int] | None,
                num_labels: int | None) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        texts, pairs, labels = read_jsonl(path)
        enc = tok(texts, pairs, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]
        x = tuple(enc[n] for n in names)
        y = None
        if labels is not None:
            if num_labels is None:
                raise DataError(f"{Path(path).name}: rows have 'label', but the model is an encoder without "
                                "classes (its metric is cosine to the float model); drop the labels")
            y = label_indices(labels, num_classes=num_labels, label2id=label2id, where=Path(path).name)
        return x, y

    def load(self, ref: ModelRef) -> LoadedModel:
        assert ref.path and ref.data
        raw = read_config(ref.path)
        cfg = self._config(ref.path)
        classifier = is_classifier(raw)
        model = self._load_model(ref.path, classifier)
        tok = self.tokenizer(ref.path)
        max_length = self._max_length(ref, tok, cfg)
        num_labels = int(cfg.num_labels) if classifier else None
        label2id = {str(k): int(v) for k, v in (getattr(cfg, "label2id", None) or {}).items()}
        x, y = self._encode(tok, ref.data.eval, max_length, label2id, num_labels)
        calib = self._encode(tok, ref.data.calibration, max_length, label2id, num_labels) if ref.data.calibration else None
        td = make_task_data(x, y, calib, what=f"{Path(ref.data.eval).name}")
        model, graph_note = as_graph(model, max_length, len(x))
        if classifier:
            metric = ref.metric or ("accuracy" if y is not None else "top1_agreement")
        else:
            metric = ref.metric or "cosine"
        if metric == "accuracy" and y is None:
            raise DataError(f"metric 'accuracy' needs a 'label' on every row of {Path(ref.data.eval).name}")
        spec = ModelSpec(
            name=ref.display_name, version=1, build=lambda: self.build(ref), data=lambda: td, metric=metric,
            make_input=tiled_input(td.eval_inputs), latency_batches=ref.latency_batches,
            description=(f"transformers {type(model.model).__name__} ({'logits' if classifier else 'mean-pooled embedding'}),"
                         f" max_length {max_length}; {td.description}"),
            extra={"source": "hf", "max_length": max_length, "input_names": ["input_ids", "attention_mask",
                   "token_type_ids"][: len(x)], "eval_batch_size": 32, "graph": graph_note},
        )
        return LoadedModel(model, spec)


__all__ = ["HFSource", "MeanPooledEncoder", "SequenceClassifier", "read_config"]

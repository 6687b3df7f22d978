"""A transformers model from a local folder (``save_pretrained`` output) and JSONL text data.

Loading is offline (forced, ``hf_env``) and code-free: ``local_files_only=True``, never
``trust_remote_code``, and before transformers opens the folder it must pass ``hf_files.check_folder``
(the rules ``submit_hf`` applies at submit: no ``auto_map`` or hub kernels in config.json, shard indexes that
name only files beside them, no tokenizer code); the attention implementation is ours, never the
file's; weights must be ``model.safetensors`` or its shards (a ``pytorch_model.bin`` is a pickle).
``*ForSequenceClassification`` → logits, judged by accuracy when
the JSONL has labels, else by top-1 agreement with the float model; ``*ForTokenClassification`` → per-token
logits over rows of words (``token_rows``), judged per word; ``*ForImageClassification`` → logits over image
folders, preprocessed as the folder's ``preprocessor_config.json`` says (``hf_images``);
``*ForQuestionAnswering`` → start and end logits over ``{question, context, answer?}`` rows (``qa_rows``),
judged by the F1 of the answer span; a base model
(``BertModel``) → its mean-pooled, L2-normalised embedding, judged by cosine similarity to the float model;
any other head is refused (``hf_tasks``). A ``train``
JSONL (for training steps) is read like the eval one, its labels optional; its rows whose text is also in
the eval file are dropped.

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

from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelpress.errors import DataError, ModelLoadError
from modelpress.optimize.outputs import GOLD_START
from modelpress.optimize.sources.base import LoadedModel, ModelSource
from modelpress.optimize.sources.common import tiled_input
from modelpress.optimize.sources.data import TrainRows, label_indices, make_task_data, read_jsonl
from modelpress.optimize.sources.hf_files import ATTN_IMPLEMENTATIONS, check_folder, read_json_object
from modelpress.optimize.sources.hf_task_rows import encode_qa, encode_words, store_chunk
from modelpress.optimize.sources.hf_tasks import hf_task
from modelpress.optimize.sources.ref import ModelRef
from modelpress.optimize.spec import ModelSpec

DEFAULT_MAX_LENGTH_CAP = 512


def _offline() -> None:
    from modelpress.optimize.hf_env import prepare_transformers

    prepare_transformers()


def read_config(folder: str | Path) -> dict[str, Any]:
    """``config.json`` as JSON (no transformers), once the folder passed every rule of ``hf_files``.

    The same rules as at submit (``submit_hf``), run again here because a row can reach a worker past
    submit: config entries that make transformers run or fetch code, shard indexes naming files outside
    the folder, tokenizer code. Every load path calls this before transformers opens the folder.

    Example:
        >>> read_config("models/intent-classifier")["architectures"]  # doctest: +SKIP
        ['BertForSequenceClassification']
    """
    found = check_folder(folder)
    if found.problems or found.config is None:
        raise ModelLoadError("; ".join(found.problems) or f"HF model folder {folder} has no readable config.json")
    return found.config


def _attention(raw: dict[str, Any], cfg: Any) -> str:
    """The attention implementation to build with: one of ``ATTN_IMPLEMENTATIONS``, never the file's string.

    ``read_config`` has refused any other value in config.json. With none given: ``sdpa`` when the model
    class has it (transformers' own default), else ``eager`` (asking for ``sdpa`` explicitly raises on a
    model without it instead of falling back).
    """
    wanted = raw.get("attn_implementation")
    if wanted in ATTN_IMPLEMENTATIONS:
        return ATTN_IMPLEMENTATIONS[ATTN_IMPLEMENTATIONS.index(wanted)]
    from transformers.models.auto import auto_factory, modeling_auto

    mapping = {"sequence-classification": modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
               "token-classification": modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING,
               "image-classification": modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING,
               "question-answering": modeling_auto.MODEL_FOR_QUESTION_ANSWERING_MAPPING,
               "causal-lm": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING}.get(
                   hf_task(raw), modeling_auto.MODEL_MAPPING)
    try:
        model_cls = auto_factory._get_model_class(cfg, mapping)
    except Exception:  # noqa: BLE001 - an unknown pairing fails later, at load, with transformers' message
        return "eager"
    return "sdpa" if getattr(model_cls, "_supports_sdpa", False) else "eager"


def _check_tokenizer_class(folder: str | Path, raw: dict[str, Any]) -> None:
    """Refuse a ``tokenizer_class`` that is not one of transformers' built-in tokenizers.

    AutoTokenizer resolves the name among transformers' own modules and, failing that, takes any
    attribute of the ``transformers`` package by that name (``AutoModel`` would do), whose
    ``from_pretrained`` it then calls: an allow-list of the tokenizer classes it maps model types to.
    """
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES

    known = {n for n in TOKENIZER_MAPPING_NAMES.values() if isinstance(n, str)}
    known |= {"PreTrainedTokenizerFast", "PythonBackend", "TokenizersBackend"}
    known |= {n.removesuffix("Fast") for n in known} | {n.removesuffix("Fast") + "Fast" for n in known}
    tok_cfg = Path(folder) / "tokenizer_config.json"
    named = [("config.json", raw.get("tokenizer_class"))]
    if tok_cfg.is_file():
        named.append(("tokenizer_config.json", read_json_object(tok_cfg).get("tokenizer_class")))
    for where, name in named:
        if name is not None and name not in known and not _builtin_tokenizer_class(name):
            raise ModelLoadError(f"HF model folder {folder}: {where} sets tokenizer_class to {str(name)[:100]!r}, "
                                 "which is not a tokenizer class built into transformers; save a built-in "
                                 "tokenizer with tokenizer.save_pretrained")


#: Tasks whose model ends in logits over the config's classes (``num_labels``, ``id2label``).
CLASSIFIERS = ("sequence-classification", "token-classification", "image-classification")


def _builtin_tokenizer_class(name: Any) -> bool:
    """Whether ``name`` is one of transformers' own tokenizer classes that its auto mapping does not list (it maps
    DistilBERT to ``BertTokenizer``, but ``DistilBertTokenizer`` is what a DistilBERT tokenizer saves as its class):
    an attribute of the ``transformers`` package that is a tokenizer class defined inside transformers."""
    import re

    import transformers
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    if not (isinstance(name, str) and re.fullmatch(r"[A-Z][A-Za-z0-9]{0,80}Tokenizer(Fast)?", name)):
        return False
    try:
        cls = getattr(transformers, name, None)
    except Exception:  # noqa: BLE001 - a name transformers cannot import is not one of its classes here
        return False
    return (isinstance(cls, type) and issubclass(cls, PreTrainedTokenizerBase)
            and cls.__module__.startswith("transformers."))


def is_classifier(cfg: dict[str, Any]) -> bool:
    """Whether the folder's model ends in logits (a sequence, token or image classifier), not an embedding."""
    return hf_task(cfg) in CLASSIFIERS


def _auto_class(task: str) -> Any:
    """transformers' auto class for the folder's task (``hf_tasks``): the head it was saved with."""
    import transformers

    return {"sequence-classification": transformers.AutoModelForSequenceClassification,
            "token-classification": transformers.AutoModelForTokenClassification,
            "image-classification": transformers.AutoModelForImageClassification,
            "question-answering": transformers.AutoModelForQuestionAnswering,
            "causal-lm": transformers.AutoModelForCausalLM}.get(task, transformers.AutoModel)


def _wrap(task: str, inner: nn.Module) -> nn.Module:
    if task == "causal-lm":  # served as it is: the LM job (``optimize.lm``) drives it through its own runner
        return inner.eval()
    if task == "image-classification":
        return ImageClassifier(inner).eval()
    if task == "question-answering":
        return QuestionAnswerer(inner).eval()
    return (SequenceClassifier(inner) if task in CLASSIFIERS else MeanPooledEncoder(inner)).eval()


class SequenceClassifier(nn.Module):
    """(input_ids, attention_mask[, token_type_ids]) → logits: a plain tensor for measuring and quantizing
    (``[rows, classes]`` for a sequence classifier, ``[rows, tokens, classes]`` for a token classifier)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kw = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kw).logits


class QuestionAnswerer(nn.Module):
    """(input_ids, attention_mask[, token_type_ids]) → ``{"start_logits", "end_logits"}``, each ``[rows, tokens]``:
    an extractive QA head's two outputs, as transformers names them (the artifact returns both)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        kw = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **kw)
        return {"start_logits": out.start_logits, "end_logits": out.end_logits}


class ImageClassifier(nn.Module):
    """pixel_values ``[rows, 3, side, side]`` → logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


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


def as_graph(eager: nn.Module, max_length: int, n_inputs: int, *, dynamic_length: bool = False) -> tuple[nn.Module, str]:
    """The wrapped model as an exported, re-modularized graph (FX-traceable, so static int8 works).

    transformers models do not trace with FX's symbolic tracer (data-dependent slicing); ``torch.export``
    traces them, and ``export.modularize`` gives back ``nn.Linear`` modules for dynamic int8 and module calls
    for FX static int8. A model that does not export stays eager (dynamic int8 only), which is recorded.
    """
    from modelpress.optimize.sources.export import modularize

    example: tuple[torch.Tensor, ...] = tuple(torch.ones(2, max_length, dtype=torch.long) for _ in range(n_inputs))
    if isinstance(eager, ImageClassifier):  # one input, pixels: max_length is the image side
        example = (torch.zeros(2, 3, max_length, max_length),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # dynamic_length: the training view (``HFSource.training_view``), which trains on rows trimmed to their batch's
    # longest; the deployed graph keeps max_length fixed, the shape it is measured and served at.
    dims: dict[int, Any] = {0: batch, 1: torch.export.Dim("seq", min=2, max=max_length)} if dynamic_length else {0: batch}
    try:
        with torch.no_grad():
            program = torch.export.export(eager, example, dynamic_shapes=tuple(dict(dims) for _ in example))
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
        return check_folder(ref.path or "").problems

    def _config(self, folder: str) -> Any:
        """The transformers config, with an attention implementation of ours (``_attention``)."""
        raw = read_config(folder)  # every folder rule, before transformers sees the folder
        _offline()
        from transformers import AutoConfig

        try:
            cfg = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        except Exception as e:  # noqa: BLE001 - transformers' errors are many; the message is what matters
            raise ModelLoadError(f"HF folder {folder}: config could not be read ({type(e).__name__}: "
                                 f"{str(e)[:300]})") from None
        # Set on the config (the setter reaches every sub-config), so from_config in build() and
        # from_pretrained in _load_model construct the same attention, whatever config.json said.
        cfg._attn_implementation = _attention(raw, cfg)
        return cfg

    def build(self, ref: ModelRef, *, dynamic_length: bool = False) -> nn.Module:
        """The wrapped architecture from ``config.json`` alone, weights uninitialised-but-seeded."""
        assert ref.path
        cfg = self._config(ref.path)
        _offline()
        raw = read_config(ref.path)
        torch.manual_seed(0)
        task = hf_task(raw)
        eager = _wrap(task, _auto_class(task).from_config(cfg))
        if task == "causal-lm":
            return eager
        if task == "image-classification":
            return as_graph(eager, self.image_preprocess(ref)["crop"], 1)[0]
        tok = self.tokenizer(ref.path)
        return as_graph(eager, self._max_length(ref, tok, cfg), len(self._input_names(tok)),
                        dynamic_length=dynamic_length)[0]

    def training_view(self, ref: ModelRef) -> tuple[nn.Module, Any]:
        """The architecture exported with a dynamic sequence length (same parameter names as ``build``) and a
        function trimming a batch of right-padded rows to its longest row (``ModelSpec.training_view``).

        Example:
            >>> view, trim = HFSource("hf").training_view(ref)  # doctest: +SKIP
            >>> trim((ids, mask))[0].shape[1] <= ids.shape[1]  # doctest: +SKIP
            True
        """
        assert ref.path
        if hf_task(read_config(ref.path)) == "image-classification":
            raise ModelLoadError("training an hf: image classifier is not built yet")
        tok = self.tokenizer(ref.path)
        view = self.build(ref, dynamic_length=True)
        if not isinstance(view, torch.fx.GraphModule):
            raise ModelLoadError("the model does not export with a dynamic sequence length")
        left = getattr(tok, "padding_side", "right") != "right"

        def trim(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            # attention_mask is the second input; rows are padded on the right, so the columns after the longest
            # row's last real token are padding in every row of the batch.
            if left or len(batch) < 2:
                return batch
            n = max(2, int(batch[1].sum(1).max()))
            return tuple(t[:, :n] for t in batch)

        return view, trim

    def _max_length(self, ref: ModelRef, tok: Any, cfg: Any) -> int:
        """Tokens per row: the ref's ``max_length``, else the tokenizer's capped at 512 and at the model's
        positions. Refused above the model's positions (a longer row cannot run) or ``max_text_length``
        (every row is padded to it).

        Example:
            >>> HFSource("hf")._max_length(ref, tok, cfg)  # doctest: +SKIP
            64
        """
        from modelpress.optimize.limits import check_text_length, current_limits

        positions = int(getattr(cfg, "max_position_embeddings", 0) or 0) or None
        length = ref.max_length or min(int(getattr(tok, "model_max_length", 512) or 512), DEFAULT_MAX_LENGTH_CAP,
                                       positions or 512)
        try:
            check_text_length(length, current_limits(), positions=positions)
        except DataError as e:
            raise DataError(str(e) if str(e).startswith("max_length") else f"max_length: {e}") from None
        return length

    def _input_names(self, tok: Any) -> list[str]:
        enc = tok(["a"], padding="max_length", max_length=4, truncation=True)
        return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]

    def _load_model(self, folder: str, task: str) -> nn.Module:
        cfg = self._config(folder)  # checks the folder again; attention chosen by us
        _offline()
        cls = _auto_class(task)
        try:
            # config= : transformers does not read config.json again; attn_implementation= : ours, from the
            # allow-list; use_kernels=False : no layer swapped for a hub kernel after loading.
            m = cls.from_pretrained(folder, config=cfg, local_files_only=True, trust_remote_code=False,
                                    use_safetensors=True, attn_implementation=cfg._attn_implementation,
                                    use_kernels=False)
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"HF folder {folder}: model could not be loaded ({type(e).__name__}: "
                                 f"{(str(e).splitlines() or [''])[0][:300]})") from None
        m.eval()
        return _wrap(task, m)

    def tokenizer(self, folder: str) -> Any:
        raw = read_config(folder)  # tokenizer_config.json's auto_map and *_file entries, among the rest
        _offline()
        from transformers import AutoTokenizer

        _check_tokenizer_class(folder, raw)
        try:
            return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"HF folder {folder}: tokenizer could not be loaded ({type(e).__name__}: "
                                 f"{str(e)[:300]}); save it beside the model with tokenizer.save_pretrained") from None

    def _encode(self, tok: Any, path: str, max_length: int, label2id: dict[str, int] | None,
                num_labels: int | None) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        x, y, _ = self._encode_rows(tok, path, max_length, label2id, num_labels)
        return x, y

    def _encode_rows(self, tok: Any, path: str, max_length: int, label2id: dict[str, int] | None,
                     num_labels: int | None) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None, list[Any]]:
        """(token tensors, label indices or None, each row's ``(text, text_pair)``: what the row is)."""
        from modelpress.optimize.limits import check_text_tokens, current_limits

        texts, pairs, labels = read_jsonl(path)
        # Every row becomes max_length tokens whatever its text: bounded before the tokenizer runs.
        check_text_tokens(len(texts), max_length, Path(path).name, current_limits())
        # In chunks, into tensors made once: the tokenizer's Python lists for a whole file cost many times
        # the tensors' size.
        chunk = 1024
        x: tuple[torch.Tensor, ...] = ()
        names: list[str] = []
        for i in range(0, len(texts), chunk):
            enc = tok(texts[i:i + chunk], pairs[i:i + chunk] if pairs else None, padding="max_length",
                      truncation=True, max_length=max_length, return_tensors="pt")
            x, names = store_chunk(x, names, enc, i, len(texts))
        y = None
        if labels is not None:
            if num_labels is None:
                raise DataError(f"{Path(path).name}: rows have 'label', but the model is an encoder without "
                                "classes (its metric is cosine to the float model); drop the labels")
            y = label_indices(labels, num_classes=num_labels, label2id=label2id, where=Path(path).name)
        return x, y, list(zip(texts, pairs or [None] * len(texts)))

    def _read(self, task: str, tok: Any, path: str, max_length: int, label2id: dict[str, int],
              num_labels: int | None) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None, list[Any], bool]:
        """(token tensors, labels or word positions, each row's content, whether the file is labelled)."""
        if task == "token-classification":
            assert num_labels is not None
            return encode_words(tok, path, max_length, label2id, num_labels)
        if task == "question-answering":
            return encode_qa(tok, path, max_length)
        x, y, keys = self._encode_rows(tok, path, max_length, label2id, num_labels)
        return x, y, keys, y is not None

    def image_preprocess(self, ref: ModelRef) -> dict[str, Any]:
        """An image classifier's ``{resize, crop, mean, std}``: the folder's ``preprocessor_config.json``
        (``hf_images``), under the ref's ``preprocess`` keys when given.

        Example:
            >>> HFSource("hf").image_preprocess(ref)["crop"]  # doctest: +SKIP
            224
        """
        from modelpress.optimize.sources.hf_images import read_preprocess
        from modelpress.optimize.sources.vision import VisionSource

        assert ref.path
        return VisionSource.checked_preprocess(read_preprocess(ref.path, class_defaults=True), ref.preprocess)

    def _load_images(self, ref: ModelRef, raw: dict[str, Any], cfg: Any, model: nn.Module) -> LoadedModel:
        """An image classifier over image folders (``hf_images``): class subfolders named by ``id2label``."""
        from modelpress.optimize.sources.data import check_labels, read_images
        from modelpress.optimize.sources.hf_images import class_ids
        from modelpress.optimize.sources.vision import check_image_folders

        assert ref.data
        pre = self.image_preprocess(ref)
        check_image_folders(ref, pre)
        classes = int(cfg.num_labels)
        id2label = raw.get("id2label") if isinstance(raw.get("id2label"), dict) else None

        def read(folder: str) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
            x, y, names = read_images(folder, pre)
            if y is not None:
                try:
                    ids = torch.tensor(class_ids(names, id2label), dtype=torch.long)
                except DataError as e:
                    raise DataError(f"image folder {folder}: {e}") from None
                y = ids[y]
                check_labels(y, classes, f"image folder {folder}")
            return x, y, names

        x, y, _ = read(ref.data.eval)
        calib = None
        if ref.data.calibration:
            cx, cy, _ = read(ref.data.calibration)
            calib = ((cx,), cy)
        train = None
        if ref.data.train:
            tx, ty, _ = read(ref.data.train)
            train = TrainRows((tx,), ty, f"image folder {ref.data.train}")
        td = make_task_data((x,), y, calib, what=f"image folder {ref.data.eval}", train=train)
        arch = type(getattr(model, "model", model)).__name__
        model, graph_note = as_graph(model, int(pre["crop"]), 1)
        metric = ref.metric or ("accuracy" if y is not None else "top1_agreement")
        if metric == "accuracy" and y is None:
            raise DataError(f"metric 'accuracy' needs labels: put the images of {ref.data.eval} in class "
                            "subfolders named by the config's id2label")
        if metric == "cosine":
            raise DataError("metric 'cosine' compares embeddings; an image classifier is judged by 'accuracy' or "
                            "'top1_agreement'")
        spec = ModelSpec(
            name=ref.display_name, version=1, build=lambda: self.build(ref), data=lambda: td, metric=metric,
            make_input=tiled_input(td.eval_inputs), latency_batches=ref.latency_batches,
            description=(f"transformers {arch} (logits), {classes} classes, {pre['crop']}x{pre['crop']} images; "
                         f"{td.description}"),
            extra={"source": "hf", "input_names": ["pixel_values"], "preprocess": pre, "eval_batch_size": 32,
                   "graph": graph_note,
                   "no_training": "is not offered for hf: image classifiers yet (their training view is not built)"},
        )
        return LoadedModel(model, spec)

    def load(self, ref: ModelRef) -> LoadedModel:
        assert ref.path and ref.data
        raw = read_config(ref.path)
        cfg = self._config(ref.path)
        task = hf_task(raw)
        classifier = is_classifier(raw)
        model = self._load_model(ref.path, task)
        if task == "image-classification":
            return self._load_images(ref, raw, cfg, model)
        if task == "causal-lm":
            from modelpress.optimize.sources.hf_causal_lm import load_causal_lm

            return load_causal_lm(ref, model, self.tokenizer(ref.path), cfg, build=lambda: self.build(ref))
        tok = self.tokenizer(ref.path)
        max_length = self._max_length(ref, tok, cfg)
        num_labels = int(cfg.num_labels) if classifier else None
        label2id = {str(k): int(v) for k, v in (getattr(cfg, "label2id", None) or {}).items()}
        x, y, eval_keys, labelled = self._read(task, tok, ref.data.eval, max_length, label2id, num_labels)
        calib = None
        if ref.data.calibration:
            calib = self._read(task, tok, ref.data.calibration, max_length, label2id, num_labels)[:2]
        train = None
        if ref.data.train:
            # Rows are compared by their text, as written: the same sentence in both files is the same row.
            tx, ty, train_keys, _ = self._read(task, tok, ref.data.train, max_length, label2id, num_labels)
            train = TrainRows(tx, ty, Path(ref.data.train).name, keys=train_keys)
        td = make_task_data(x, y, calib, what=f"{Path(ref.data.eval).name}", train=train, eval_keys=eval_keys)
        model, graph_note = as_graph(model, max_length, len(x))
        metric = self._metric(ref, task, labelled)
        what = {"accuracy": "a 'label'", "token_accuracy": "'labels' (one tag per word)",
                "span_f1": "an 'answer'"}.get(metric)
        if what and not labelled:
            raise DataError(f"metric 'accuracy' needs {what} on every row of {Path(ref.data.eval).name}")
        if metric == "span_f1" and not bool((td.eval_labels & GOLD_START).any()):  # type: ignore[operator]
            raise DataError(f"{Path(ref.data.eval).name}: no held-out row's answer is inside the first {max_length} "
                            "tokens; raise max_length")
        spec = ModelSpec(
            name=ref.display_name, version=1, build=lambda: self.build(ref), data=lambda: td, metric=metric,
            training_view=lambda: self.training_view(ref),
            make_input=tiled_input(td.eval_inputs), latency_batches=ref.latency_batches,
            description=(f"transformers {type(model.model).__name__} ({_OUTPUT[task]}),"
                         f" max_length {max_length}; {td.description}"),
            extra={"source": "hf", "max_length": max_length, "input_names": ["input_ids", "attention_mask",
                   "token_type_ids"][: len(x)], "eval_batch_size": 32, "graph": graph_note,
                   **({"no_training": _NO_TRAINING[task]} if task in _NO_TRAINING else {})},
        )
        return LoadedModel(model, spec)

    @staticmethod
    def _metric(ref: ModelRef, task: str, labelled: bool) -> Any:
        """The metric for the folder's task: the ref's when given (``accuracy``/``top1_agreement`` name the
        per-word ones for a token classifier), else accuracy on labelled data and agreement with float without.
        """
        if task in _TASK_METRICS:
            # The ref's names (accuracy: against the data's labels; top1_agreement: against float) mapped to the
            # task's own metrics; cosine compares embeddings, which these models do not output.
            labelled_metric, agreement, judged = _TASK_METRICS[task]
            if ref.metric == "cosine":
                raise DataError(f"metric 'cosine' compares embeddings; a {task} model is judged {judged}: "
                                "'accuracy' (against the data's labels) or 'top1_agreement' (against the float model)")
            wanted = ref.metric or ("accuracy" if labelled else "top1_agreement")
            return labelled_metric if wanted == "accuracy" else agreement
        if task == "sequence-classification":
            return ref.metric or ("accuracy" if labelled else "top1_agreement")
        return ref.metric or "cosine"


_OUTPUT = {"sequence-classification": "logits", "token-classification": "per-token logits, judged per word",
           "question-answering": "start and end logits, judged by answer span", "embedding": "mean-pooled embedding"}
# Tasks with metrics of their own: (with labels, against float, how they are judged).
_TASK_METRICS = {"token-classification": ("token_accuracy", "token_agreement", "per word"),
                 "question-answering": ("span_f1", "span_agreement", "by its answer spans")}
# Tasks whose training steps are refused on the worker (``job``), with the reason.
_NO_TRAINING = {
    "token-classification": "is not offered for token classifiers yet (their losses are per word, over rows "
                            "trimmed to their length)",
    "question-answering": "is not offered for question-answering models yet (their losses are over answer spans)",
}


__all__ = ["CLASSIFIERS", "HFSource", "ImageClassifier", "MeanPooledEncoder", "QuestionAnswerer", "SequenceClassifier",
           "read_config"]

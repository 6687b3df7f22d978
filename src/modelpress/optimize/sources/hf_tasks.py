"""What an ``hf:`` folder's model is for, read from ``config.json``'s ``architectures`` as data (no transformers).

The head a folder was saved with decides how it is judged, so it is never guessed from what happens to load:

- ``*ForSequenceClassification`` → ``sequence-classification``: logits, judged by accuracy (labelled data)
  or by top-1 agreement with the float model;
- ``*ForTokenClassification`` → ``token-classification``: per-token logits over JSONL rows of words
  (``token_rows``), judged on each word's first sub-token by accuracy against its tag or by agreement with the
  float model (``token_accuracy``, ``token_agreement``);
- ``*ForQuestionAnswering`` → ``question-answering``: start and end logits over JSONL rows
  ``{question, context, answer?}`` (``qa_rows``), judged by the F1 of the answer span against the answer or the
  float model's span (``span_f1``, ``span_agreement``);
- ``*ForImageClassification`` → ``image-classification``: logits over image folders, preprocessed as the
  folder's ``preprocessor_config.json`` says (``hf_images``), judged like a torchvision classifier;
- a bare base model (``BertModel``, ``XLMRobertaModel``, ``MPNetModel``: a name ending in ``Model`` with no
  task in it) → ``embedding``: its mean-pooled, L2-normalised hidden states, judged by cosine to float;
- ``*ForCausalLM`` and the older ``*LMHeadModel`` → ``causal-lm``: judged by perplexity on JSONL text and
  next-token agreement with float, timed as prefill and decode with the KV cache (``optimize.lm``);
- anything else (``BertForMaskedLM``, ``T5ForConditionalGeneration``,
  ``BertForMultipleChoice``, ...) is refused, at submit and again on the worker,
  naming its task and the supported ones. Pooling a masked LM's hidden states would give
  numbers about a model nobody deploys.

A config without ``architectures`` (a hand-written one) is taken as a base encoder, as transformers'
``AutoModel`` would load it.

Example:
    >>> hf_task({"architectures": ["BertForSequenceClassification"]}), hf_task({"architectures": ["BertModel"]})
    ('sequence-classification', 'embedding')
    >>> hf_task({"architectures": ["LlamaForCausalLM"]})
    'causal-lm'
"""

from __future__ import annotations

from typing import Any

SUPPORTED = ("sequence-classification", "token-classification", "question-answering", "image-classification",
             "causal-lm", "embedding")
# Heads by the part of the class name transformers gives them (``...ForQuestionAnsweringSimple``,
# ``...ForImageClassificationWithTeacher`` are heads too); the older LM heads are named ``...LMHeadModel``.
_HEADS = (
    ("ForSequenceClassification", "sequence-classification"),
    ("ForCausalLM", "causal-lm"),
    # XLM's and Flaubert's ``*WithLMHeadModel`` predict masked tokens (cross-lingual MLM): not a decoder to time.
    ("WithLMHead", "masked-lm"),
    ("LMHead", "causal-lm"),
    ("ForConditionalGeneration", "text-generation (encoder-decoder or multimodal)"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForImageClassification", "image-classification"),
    ("ForMaskedLM", "masked-lm"),
    ("ForMultipleChoice", "multiple-choice"),
    ("ForPreTraining", "pre-training heads"),
)


def hf_task(config: dict[str, Any]) -> str:
    """The task of the folder's model, by its first architecture (the one transformers builds).

    Example:
        >>> hf_task({"architectures": ["GPT2LMHeadModel"]}), hf_task({})
        ('causal-lm', 'embedding')
    """
    archs = config.get("architectures") or []
    name = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    if name is None:
        return "embedding"
    for part, task in _HEADS:
        if part in name:
            return task
    if name.endswith("Model") and "For" not in name and "Head" not in name:
        return "embedding"
    return f"other ({name[:80]})"


def task_problem(config: dict[str, Any]) -> str | None:
    """One line refusing a folder whose task modelpress does not judge, or None.

    Example:
        >>> task_problem({"architectures": ["BertModel"]}) is None
        True
        >>> task_problem({"architectures": ["BertForMaskedLM"]})[:57]
        'config.json names architecture BertForMaskedLM, a masked-'
    """
    task = hf_task(config)
    if task in SUPPORTED:
        return None
    name = str((config.get("architectures") or ["?"])[0])[:80]
    hint = (" To judge its encoder by its embeddings, save the base model (model.base_model.save_pretrained)."
            if task in ("masked-lm", "pre-training heads") else "")
    return (f"config.json names architecture {name}, a {task} model, which hf: folders do not support yet: "
            "supported are *ForSequenceClassification (judged by accuracy, or agreement with the float model), "
            "*ForTokenClassification (per word, on JSONL rows {\"tokens\": [...], \"labels\": [...]}), "
            "*ForQuestionAnswering (JSONL rows {\"question\", \"context\", \"answer\"}), "
            "*ForImageClassification (on image folders), "
            "*ForCausalLM / *LMHeadModel (perplexity on JSONL text, with int8-weight-only or int4-weight-only) "
            "and base models such as BertModel (mean-pooled embeddings, judged by cosine). It is not judged "
            f"as an embedder instead, because its own head is what is deployed.{hint}")


__all__ = ["SUPPORTED", "hf_task", "task_problem"]

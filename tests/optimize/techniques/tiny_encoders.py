"""A small BERT encoder given as an ``hf:`` folder, loaded the way a worker loads it, for the transformer steps.

Random weights (``from_config``, seeded), 3 layers of 4 heads, FFN 64 wide: enough structure to find, cut and
distill in seconds. The rows are the topic sentences of ``tests.own_models_fixtures``; train rows are separate
sentences, added to the loaded ``TaskData`` (the source reads a ``data.train`` file the same way).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from tests.own_models_fixtures import FILLER, SPECIAL, TOPICS, topic_rows, write_jsonl

LAYERS, HEADS, HIDDEN, FFN = 3, 4, 32, 64


def build_encoder_folder(root: Path, *, classifier: bool = False) -> Path:
    """Save a random BERT encoder (or 3-topic classifier) and its tokenizer under ``root``; returns the folder."""
    import torch

    from modelpress.optimize.sources.vision import import_torchvision

    import_torchvision()  # transformers imports torchvision when it is installed
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    folder = root / ("classifier" if classifier else "encoder")
    folder.mkdir(parents=True)
    vocab = SPECIAL + sorted({w for ws in TOPICS.values() for w in ws} | set(FILLER))
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True, model_max_length=16)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                     intermediate_size=FFN, max_position_embeddings=32, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, num_labels=3)
    torch.manual_seed(0)
    model = (BertForSequenceClassification if classifier else BertModel)(cfg).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def load_encoder(root: Path, *, classifier: bool = False, train_rows: int = 256) -> tuple[Any, Any, Any]:
    """(spec, float graph, TaskData with train rows) of the folder, as ``HFSource.load`` gives them."""
    from modelpress.optimize.sources import get_source, parse_model_ref

    folder = build_encoder_folder(root, classifier=classifier)
    keep = (lambda r: r) if classifier else (lambda r: {"text": r["text"]})  # an encoder's rows have no labels
    ev = write_jsonl(root / "eval.jsonl", [keep(r) for r in topic_rows(60, seed=1)])
    cal = write_jsonl(root / "calib.jsonl", [keep(r) for r in topic_rows(24, seed=2)])
    ref = parse_model_ref(f"hf:{folder}", data={"eval": str(ev), "calibration": str(cal)}, max_length=16)
    src = get_source("hf")
    loaded = src.load(ref)
    tok = src.tokenizer(str(folder))
    rows = topic_rows(train_rows, seed=3)
    enc = tok([r["text"] for r in rows], padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]
    import torch

    labels = torch.tensor([r["label"] for r in rows]) if classifier else None
    data = dataclasses.replace(loaded.spec.data(), train_inputs=tuple(enc[n] for n in names), train_labels=labels)
    return loaded.spec, loaded.model.eval(), data

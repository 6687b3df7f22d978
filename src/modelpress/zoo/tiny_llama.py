"""A small Llama-style causal LM, trained at first use on a corpus every Python ships: ``pydoc_data.topics``.

Causal-LM work (perplexity budgets, int8 of a decoder, the coverage matrix's Llama row) needs a model that has
*learned* something, or a compression that wrecks it looks as good as one that does not: a random-initialised
decoder is at perplexity ≈ its vocabulary size before and after. No trained decoder is on this machine and
nothing may be downloaded, so this module trains one from CPython's own documentation (``pydoc_data.topics``:
79 topics, about 465k characters, in every CPython install).

* ``corpus_splits``: the corpus as text rows (paragraphs merged or cut to at most ``ROW_CHARS`` characters,
  whitespace collapsed) in ``train``/``validation``/``calibration``/``eval`` splits that are disjoint by topic
  (whole topics, and topics that repeat each other's paragraphs, go to one split: ``topic_groups``) and by
  content (no row text in two splits), so that held-out perplexity measures text the model never saw.
* ``build_tiny_llama``: a byte-level BPE tokenizer trained on the train split only, a ``LlamaForCausalLM``
  trained on it (``DEFAULT_STEPS`` AdamW steps on packed 128-token blocks), both saved with
  ``save_pretrained`` into a folder that loads offline through transformers' auto classes; the splits are
  written as JSONL beside it, in ``<folder>-data/``.
* ``tiny_llama_dir``: the same, built once per machine and cached (an atomic rename, a file lock).
* ``perplexity``: a causal LM's perplexity on text rows packed as in training.

What to expect of the default build (a 1,024-token vocabulary): eval perplexity about 65. With a 4,096-token
vocabulary it was 254 (untrained: about 4,250, the vocabulary's size; a unigram model fitted on train: 872; an
interpolated bigram: 315): held-out *topics* are hard for 55k training tokens, and a smaller vocabulary gives a
smaller per-token number for the same per-character quality.

Training sums floats in an order that depends on the CPU's kernels and the thread count, so two machines may
hold different weights (not bit-identical, unlike ``builtin_weights``); the cache key covers everything *this*
machine's result depends on, so one machine never reuses a folder built under other settings.

Example:
    >>> folder = tiny_llama_dir()  # doctest: +SKIP
    >>> from transformers import AutoModelForCausalLM, AutoTokenizer  # doctest: +SKIP
    >>> model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)  # doctest: +SKIP
    >>> tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)  # doctest: +SKIP
    >>> rows = read_split(folder, "eval")  # doctest: +SKIP
    >>> perplexity(model, tok, rows) < 300  # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

if TYPE_CHECKING:  # torch and transformers load only when a model is built or measured (seconds of imports)
    import torch

#: Split names, in the order rows are deduplicated against earlier splits.
SPLITS: tuple[str, ...] = ("train", "validation", "calibration", "eval")
#: The fewest rows each held-out split gets, and the share of all rows it aims for (whichever is larger);
#: train gets the rest, about two thirds (65 % with seed 0).
SPLIT_MIN_ROWS: dict[str, int] = {"eval": 300, "validation": 100, "calibration": 64}
SPLIT_SHARE: dict[str, float] = {"eval": 0.15, "validation": 0.07, "calibration": 0.045}
#: A held-out split takes a topic group only if it stays within this multiple of its target: a big group
#: (the 750-row ``compound``/``specialnames`` one) goes to train instead of swelling eval.
OVERSHOOT = 1.35
#: A row is at most this many characters: long enough to carry context, short enough for ~1,900 rows,
#: enough to fill the held-out splits with whole topics.
ROW_CHARS = 300
#: Topics sharing a paragraph at least this long are one group (``topic_groups``).
SHARED_CHARS = 40

#: The model's sizes; ``build_tiny_llama(**size)`` overrides any of them (tests build a smaller one).
DEFAULT_SIZE: dict[str, int] = {
    # The BPE vocabulary to train (the config's vocab_size is the tokenizer's length). 1,024: 55k train tokens
    # cannot fit a larger one well (a 4,096 vocabulary left held-out perplexity at 254, 1,024 reached 55).
    "vocab_size": 1024,
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention, as real Llamas have it
    # A multiple of 128: NNCF's default int4 group (the peer in benchmarks/lm_weight_only.py runs its defaults,
    # and they refuse a layer whose inputs the group does not divide).
    "intermediate_size": 768,
    "max_position_embeddings": 512,
}
SPECIAL_TOKENS: tuple[str, ...] = ("<s>", "</s>", "<unk>", "<pad>")
BLOCK_SIZE = 128
BATCH_SIZE = 16
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.1
WARMUP_SHARE = 0.1
MIN_LR_SHARE = 0.1  # cosine decays to 10 % of the peak, not to 0: the last steps still learn
#: Share of input tokens replaced by random ones during training (the labels stay the true next tokens).
#: 55k train tokens are memorised by a 5M-parameter model in a few epochs (without it, eval perplexity rose
#: from 275 at step 150 to 735 at step 400); Llama has no hidden dropout to set, and with this noise eval
#: perplexity kept falling through 400 steps (to about 240).
INPUT_NOISE = 0.25
TRAIN_THREADS = 2
#: Steps of the default build: 90 s for the whole build on 2 cores (measured with the 1,024 vocabulary), about
#: 3 min when other work shares them; held-out (eval topics') perplexity 64.9 after them, against 4,246 untrained
#: and 872 for token frequencies at a 4,096 vocabulary.
DEFAULT_STEPS = 300
DEFAULT_SEED = 0
CACHE_ENV = "MODELPRESS_CACHE"
DATA_SUFFIX = "-data"


# ----------------------------------------------------------------------------- corpus
def _topics() -> dict[str, str]:
    import pydoc_data.topics

    return dict(pydoc_data.topics.topics)


def corpus_sha256() -> str:
    """sha256 of the corpus (every topic's name and text): another Python's docs are another corpus.

    Example:
        >>> len(corpus_sha256())
        64
    """
    blob = json.dumps(_topics(), sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


def _cut(paragraph: str, limit: int) -> Iterator[str]:
    """``paragraph`` in pieces of at most ``limit`` characters, cut after a sentence when one ends in the
    second half of the piece, else at a space (a word is never split unless it alone is too long)."""
    while len(paragraph) > limit:
        sentence_end = paragraph.rfind(". ", limit // 2, limit)
        space = paragraph.rfind(" ", 1, limit + 1)
        cut = sentence_end + 1 if sentence_end >= 0 else space if space > 0 else limit
        yield paragraph[:cut].strip()
        paragraph = paragraph[cut:].strip()
    if paragraph:
        yield paragraph


def topic_rows(text: str, *, limit: int = ROW_CHARS) -> list[str]:
    """One topic's text as rows: paragraphs (blank-line separated), whitespace collapsed, empty ones dropped,
    long ones cut and short neighbours merged so that every row has at most ``limit`` characters.

    Example:
        >>> topic_rows("A  first\\nparagraph.\\n\\n\\n  Second. ", limit=40)
        ['A first paragraph. Second.']
        >>> topic_rows("One. Two. Three.", limit=10)
        ['One. Two.', 'Three.']
    """
    pieces = [piece for raw in re.split(r"\n\s*\n", text) for piece in _cut(" ".join(raw.split()), limit)]
    rows: list[str] = []
    for piece in pieces:
        # Merge, not one row per paragraph: a third of the paragraphs are a heading or a code line, too
        # short to predict anything from.
        if rows and len(rows[-1]) + 1 + len(piece) <= limit:
            rows[-1] += " " + piece
        else:
            rows.append(piece)
    return rows


def topic_groups() -> list[list[str]]:
    """The corpus's topics grouped so that no two groups share a paragraph (of ``SHARED_CHARS`` or more).

    Topics overlap verbatim: ``compound`` holds ``if``, ``while``, ``try``...; ``specialnames`` holds
    ``customization`` and ``attribute-access``. A split by single topics would put the same text in train
    and eval; a group (connected through shared paragraphs) goes to one split whole. Groups and the names in
    each are sorted.

    Example:
        >>> groups = topic_groups()
        >>> next(g for g in groups if "if" in g) == next(g for g in groups if "compound" in g)
        True
    """
    topics = _topics()
    parent = {name: name for name in topics}

    def root(name: str) -> str:
        while parent[name] != name:
            name = parent[name]
        return name

    first_owner: dict[str, str] = {}
    for name, text in sorted(topics.items()):
        for raw in re.split(r"\n\s*\n", text):
            paragraph = " ".join(raw.split())
            if len(paragraph) < SHARED_CHARS:  # "Changed in version 3.8." recurs everywhere, says nothing
                continue
            owner = first_owner.setdefault(paragraph, name)
            parent[root(name)] = root(owner)
    groups: dict[str, list[str]] = {}
    for name in sorted(topics):
        groups.setdefault(root(name), []).append(name)
    return sorted(groups.values())


def split_topics(*, seed: int = DEFAULT_SEED) -> dict[str, list[str]]:
    """Which topics go to which split (``corpus_splits`` holds their rows); each topic in exactly one split.

    Topic groups (``topic_groups``), shuffled by ``seed``, fill the held-out splits first: a group goes to the
    first held-out split still short of its target (``SPLIT_SHARE`` of all rows, at least ``SPLIT_MIN_ROWS``)
    that it does not overshoot by more than ``OVERSHOOT``; every other group goes to train.

    Example:
        >>> t = split_topics()
        >>> sorted(t) == sorted(SPLITS) and sum(map(len, t.values())) == 79
        True
    """
    topics = _topics()
    groups = topic_groups()
    size = [len(_group_rows(group, topics)) for group in groups]
    total = sum(size)
    targets = {split: max(SPLIT_MIN_ROWS[split], round(SPLIT_SHARE[split] * total)) for split in SPLIT_MIN_ROWS}
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)  # random.Random(int) is the same stream on every platform and version
    taken = dict.fromkeys(SPLITS, 0)
    chosen: dict[str, list[str]] = {split: [] for split in SPLITS}
    for i in order:
        split = next((s for s, want in targets.items()
                      if taken[s] < want and taken[s] + size[i] <= want * OVERSHOOT), "train")
        taken[split] += size[i]
        chosen[split].extend(groups[i])
    return {split: sorted(names) for split, names in chosen.items()}


def _group_rows(names: Sequence[str], topics: dict[str, str]) -> list[str]:
    """The rows of a topic group, each text once (a shared paragraph can still make identical rows)."""
    return list(dict.fromkeys(row for name in sorted(names) for row in topic_rows(topics[name])))


def corpus_splits(*, seed: int = DEFAULT_SEED) -> dict[str, list[str]]:
    """The corpus's rows in ``train``, ``validation``, ``calibration`` and ``eval``, disjoint by topic and content.

    The topics of each split are ``split_topics(seed=seed)``'s, and no row text occurs twice in the corpus's
    splits: a row already in an earlier split (``SPLITS`` order) is dropped, so no held-out row is a train
    row. Deterministic: the same seed and Python give the same rows, in topic-name order within a split.

    Example:
        >>> s = corpus_splits()
        >>> len(s["eval"]) >= 300 and len(s["validation"]) >= 100 and len(s["calibration"]) >= 64
        True
        >>> 0.6 < len(s["train"]) / sum(map(len, s.values())) < 0.8
        True
    """
    topics = _topics()
    splits = {split: _group_rows(names, topics) for split, names in split_topics(seed=seed).items()}
    seen: set[str] = set()
    for split in SPLITS:
        splits[split] = [row for row in splits[split] if row not in seen]
        seen.update(splits[split])
    short = {s: len(splits[s]) for s, need in SPLIT_MIN_ROWS.items() if len(splits[s]) < need}
    if short:  # not with the CPython corpora seen so far; a future one must fail loudly, not shrink eval
        raise RuntimeError(f"corpus_splits(seed={seed}): too few rows for {short} (need {SPLIT_MIN_ROWS})")
    return splits


def data_folder(folder: str | Path) -> Path:
    """Where ``build_tiny_llama(folder)`` writes the splits: the sibling ``<folder>-data``.

    Example:
        >>> data_folder("/cache/tiny-llama/model").as_posix()
        '/cache/tiny-llama/model-data'
    """
    folder = Path(folder)
    return folder.with_name(folder.name + DATA_SUFFIX)


def read_split(folder: str | Path, split: str) -> list[str]:
    """The rows of one split written beside a built model folder (``<folder>-data/<split>.jsonl``).

    Example:
        >>> read_split(tiny_llama_dir(), "calibration")[:1]  # doctest: +SKIP
        ['The "assert" statement ...']
    """
    if split not in SPLITS:
        raise ValueError(f"no split {split!r}; the splits are {', '.join(SPLITS)}")
    lines = (data_folder(folder) / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines if line]


def _write_splits(folder: Path, splits: dict[str, list[str]]) -> None:
    folder.mkdir(parents=True)
    for split, rows in splits.items():
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({"text": row}, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- tokenizer and model
def _prepare_transformers() -> None:
    # Before any transformers import: hub access off, and the torchvision shim without which transformers'
    # own torchvision import fails beside the CPU torch (``optimize/hf_env.py``).
    from modelpress.optimize.hf_env import prepare_transformers

    prepare_transformers()


def _sizes(size: dict[str, int]) -> dict[str, int]:
    unknown = sorted(set(size) - set(DEFAULT_SIZE))
    if unknown:
        raise TypeError(f"unknown size setting(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_SIZE)}")
    return {**DEFAULT_SIZE, **size}


def _train_tokenizer(rows: Sequence[str], vocab_size: int, max_length: int) -> Any:
    """A byte-level BPE tokenizer trained on ``rows``, as a ``PreTrainedTokenizerFast`` (bos prepended)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    _prepare_transformers()
    from transformers import PreTrainedTokenizerFast

    # Byte-level: every string encodes (no <unk> on held-out topics) and decodes back to itself exactly.
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(rows, trainer)
    bos = tok.token_to_id("<s>")
    # <s> first, as Llama tokenizers do: the model always predicts a row's first token from a known state.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", model_max_length=max_length)


def pack(tokenizer: Any, rows: Sequence[str], *, block_size: int = BLOCK_SIZE) -> torch.Tensor:
    """``rows`` tokenized as ``<s> row </s>``, concatenated and cut into ``[n, block_size]`` blocks (the tail
    shorter than a block is dropped, unless it is all there is).

    Example:
        >>> from transformers import AutoTokenizer  # doctest: +SKIP
        >>> pack(AutoTokenizer.from_pretrained(tiny_llama_dir()), ["a b c"] * 100).shape  # doctest: +SKIP
        torch.Size([3, 128])
    """
    import torch

    ids: list[int] = []
    for row_ids in tokenizer(list(rows), add_special_tokens=True)["input_ids"]:
        ids.extend(row_ids)
        ids.append(tokenizer.eos_token_id)  # </s>: the model learns where a row ends, not to run on
    n = len(ids) // block_size
    if n == 0:
        return torch.tensor([ids], dtype=torch.long)
    return torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size)


def perplexity(model: Any, tokenizer: Any, rows: Sequence[str], *, block_size: int = BLOCK_SIZE,
               batch_size: int = BATCH_SIZE) -> float:
    """Perplexity of a causal LM on ``rows`` packed as in training (``pack``): exp of the mean next-token loss.

    Example:
        >>> round(perplexity(model, tok, read_split(folder, "eval")))  # doctest: +SKIP
        65
    """
    import torch

    blocks = pack(tokenizer, rows, block_size=block_size)
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    try:
        with torch.no_grad():
            for batch in blocks.split(batch_size):
                loss = model(input_ids=batch, labels=batch).loss
                predicted = batch.numel() - batch.shape[0]  # a block's first token is never predicted
                nll += float(loss) * predicted
                count += predicted
    finally:
        model.train(was_training)
    return math.exp(nll / count)


def _lr_factor(step: int, steps: int) -> float:
    """Linear warmup, then cosine from the peak down to ``MIN_LR_SHARE`` of it."""
    warmup = max(1, round(WARMUP_SHARE * steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return MIN_LR_SHARE + (1 - MIN_LR_SHARE) * 0.5 * (1 + math.cos(math.pi * progress))


def _train(model: Any, blocks: torch.Tensor, *, steps: int, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.95), weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _lr_factor(step, steps))
    order = torch.empty(0, dtype=torch.long)
    before = torch.get_num_threads()
    # Two threads while training, the cores the build's time budget counts on; the caller's setting (tests and
    # workers pin one thread) comes back however training ends.
    torch.set_num_threads(TRAIN_THREADS)
    model.train()
    try:
        for step in range(steps):
            if len(order) < BATCH_SIZE:  # epochs of a seeded permutation: each block once before any twice
                order = torch.cat([order, torch.randperm(len(blocks), generator=g)])
            batch, order = blocks[order[:BATCH_SIZE]], order[BATCH_SIZE:]
            noisy = torch.rand(batch.shape, generator=g) < INPUT_NOISE
            # Ordinary tokens only: the special ones (ids 0-3, added first) mark row boundaries.
            random_ids = torch.randint(len(SPECIAL_TOKENS), vocab, batch.shape, generator=g)
            inputs = torch.where(noisy, random_ids, batch)
            loss = model(input_ids=inputs, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # one bad early batch must not blow up Adam
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(before)
        model.eval()


def _empty_or_absent(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def build_tiny_llama(folder: str | Path, *, steps: int = DEFAULT_STEPS, seed: int = DEFAULT_SEED,
                     **size: int) -> Path:
    """Train the tokenizer and the model and save them to ``folder``; the splits go to ``data_folder(folder)``.

    ``size`` overrides ``DEFAULT_SIZE`` entries (``hidden_size=64``...). ``folder`` and ``<folder>-data`` must
    be absent or empty: a rebuild over an older build would leave its files mixed in. Uncached and not atomic:
    ``tiny_llama_dir`` is the cached, crash-safe way to get the default model.

    Example:
        >>> build_tiny_llama("/tmp/tl/model", steps=30, hidden_size=64, intermediate_size=128)  # doctest: +SKIP
        PosixPath('/tmp/tl/model')
    """
    import torch

    _prepare_transformers()
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    sizes = _sizes(size)
    for path in (folder, data_folder(folder)):
        if not _empty_or_absent(path):
            raise FileExistsError(f"{path} is not empty; build into a new folder")
    splits = corpus_splits(seed=seed)
    # The tokenizer sees train only: held-out topics' words are as new to it as to the model.
    tok = _train_tokenizer(splits["train"], sizes["vocab_size"], sizes["max_position_embeddings"])
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=sizes["hidden_size"], num_hidden_layers=sizes["num_hidden_layers"],
        num_attention_heads=sizes["num_attention_heads"], num_key_value_heads=sizes["num_key_value_heads"],
        intermediate_size=sizes["intermediate_size"], max_position_embeddings=sizes["max_position_embeddings"],
        tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id)
    blocks = pack(tok, splits["train"])
    # fork_rng: the seeded init must not depend on what the process drew before, nor move the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        _train(model, blocks, steps=steps, seed=seed)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    _strip_config(folder / "config.json")
    _write_splits(data_folder(folder), splits)
    return folder


def _strip_config(path: Path) -> None:
    """Drop what modelpress's folder checks refuse (``hf_files``): an ``auto_map``, or an attention
    implementation other than eager/sdpa (the one the model ran with here says nothing about the file)."""
    config = json.loads(path.read_text(encoding="utf-8"))
    changed = config.pop("auto_map", None) is not None
    for key in ("attn_implementation", "_attn_implementation"):
        if key in config and config[key] not in (None, "eager", "sdpa"):
            del config[key]
            changed = True
    if changed:
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- the cached build
def default_cache_dir() -> Path:
    """``$MODELPRESS_CACHE``, else ``~/.cache/modelpress``.

    Example:
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {CACHE_ENV: "/srv/mp-cache"}):
        ...     default_cache_dir().as_posix()
        '/srv/mp-cache'
    """
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "modelpress"


@functools.lru_cache(maxsize=1)
def _code_sha256() -> str:
    # This file's bytes: a changed recipe is a new folder, with no version number to forget to bump.
    try:
        return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    except OSError:  # no source file (a frozen install): the settings and versions still key the build
        return "unknown"


def build_key(*, steps: int = DEFAULT_STEPS, seed: int = DEFAULT_SEED, **size: int) -> str:
    """The short sha256 naming a cached build: sizes, steps, seed, training settings, this module's code,
    the corpus, and the torch, transformers and tokenizers versions (all of which change the weights).

    Example:
        >>> build_key() == build_key() != build_key(steps=DEFAULT_STEPS + 1)
        True
        >>> len(build_key())
        16
    """
    settings = {
        "size": _sizes(size), "steps": steps, "seed": seed, "block_size": BLOCK_SIZE, "batch_size": BATCH_SIZE,
        "lr": LEARNING_RATE, "weight_decay": WEIGHT_DECAY, "warmup": WARMUP_SHARE, "min_lr": MIN_LR_SHARE,
        "input_noise": INPUT_NOISE, "split_share": SPLIT_SHARE, "split_min_rows": SPLIT_MIN_ROWS,
        "overshoot": OVERSHOOT, "shared_chars": SHARED_CHARS,
        "threads": TRAIN_THREADS, "row_chars": ROW_CHARS, "code": _code_sha256(), "corpus": corpus_sha256(),
        # Read from the installed metadata, not by importing them: a cache hit costs no transformers import.
        **{package: version(package) for package in ("torch", "transformers", "tokenizers")},
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``, held for the block; released by the kernel if the process dies,
    so a crashed build never blocks the next one. The lock file stays: deleting it would let a third
    process lock a new inode while a second still holds the old one."""
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def tiny_llama_dir(cache_dir: str | Path | None = None, *, steps: int = DEFAULT_STEPS, seed: int = DEFAULT_SEED,
                   **size: int) -> Path:
    """The model folder of the tiny Llama with these settings, built on first use and cached.

    Layout: ``<cache_dir>/tiny-llama-<build_key>/model`` (config, weights, tokenizer) and ``.../model-data``
    (the splits as JSONL, ``read_split``). Both are built in a hidden temp folder beside it and published by
    one ``os.replace``: a crash leaves no half-written folder (its temp is removed by the next build), and a
    caller whose replace loses a race discards its own temp. A file lock keeps a second process from
    training the same model at the same time: it waits, then finds the folder built. ``cache_dir``
    defaults to ``default_cache_dir()``.

    Example:
        >>> folder = tiny_llama_dir()  # doctest: +SKIP
        >>> sorted(p.name for p in folder.iterdir())  # doctest: +SKIP
        ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    name = f"tiny-llama-{build_key(steps=steps, seed=seed, **size)}"
    final = cache / name
    model = final / "model"
    if model.is_dir():
        return model
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / f".{name}.lock"):
        if model.is_dir():  # another process built it while we waited for the lock
            return model
        for stale in cache.glob(f".{name}.tmp-*"):  # a crashed build's: no live builder holds the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache))
        tmp.chmod(0o755)  # mkdtemp's 0700 would survive the rename and hide the model from other users
        try:
            build_tiny_llama(tmp / "model", steps=steps, seed=seed, **size)
            try:
                os.replace(tmp, final)
            except OSError:
                # Lost a race the lock did not prevent (a filesystem without flock): the winner's folder is
                # as good as ours. Anything else (no winner) is a real error.
                if not model.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return model


__all__ = ["BLOCK_SIZE", "DEFAULT_SIZE", "DEFAULT_STEPS", "SPLITS", "build_key", "build_tiny_llama",
           "corpus_sha256", "corpus_splits", "data_folder", "default_cache_dir", "pack", "perplexity", "read_split",
           "split_topics", "tiny_llama_dir", "topic_groups", "topic_rows"]

"""JSONL rows for a token classifier: ``{"tokens": [word, ...], "labels"?: [tag, ...]}``, without torch.

One row is one sentence already split into words, as taggers' data comes (CoNLL-style); ``labels``, when
given, has one tag per word, each a class index or a name from the model's ``id2label``. Every row of a file
has labels or none does. The worker's reader (``read_token_jsonl``) and submit's check
(``token_jsonl_problems``) apply the same rules, so a file that passes submit loads on the worker.

Words are judged on their first sub-token, as taggers are trained and scored: ``hf.HFSource`` marks that
position of each word with the word's tag (or ``UNLABELLED_WORD`` when the file has no labels) and every other
position with ``NOT_A_WORD``.

Example:
    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "ner.jsonl")
    >>> _ = open(f, "w").write('{"tokens": ["Ada", "wrote"], "labels": ["B-PER", "O"]}\\n')
    >>> read_token_jsonl(f)
    ([['Ada', 'wrote']], [['B-PER', 'O']])
    >>> token_jsonl_problems(f, classes=3, label_names={"O", "B-PER"})
    []
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelpress.errors import DataError
from modelpress.optimize.sources.data_checks import MAX_TEXT_FILE_BYTES, jsonl_objects, read_at_submit

#: A position that is not the first sub-token of a word (special tokens, padding, later sub-tokens).
NOT_A_WORD = -100
#: The first sub-token of a word whose tag the file does not give (judged by agreement with float).
UNLABELLED_WORD = -1
#: Words per row: a row is one sentence, and every row is padded to ``max_length`` tokens anyway.
MAX_WORDS = 4096


def _row(row: dict[str, Any], lineno: int, name: str) -> tuple[list[str], list[Any] | None]:
    extra = set(row) - {"tokens", "labels"}
    if extra:
        hint = " (a token classifier's rows are words: {\"tokens\": [...], \"labels\": [...]})" if "text" in row else ""
        raise DataError(f"{name} line {lineno}: unknown field(s) {sorted(extra)}; allowed: tokens, labels{hint}")
    words = row.get("tokens")
    if not isinstance(words, list) or not words or not all(isinstance(w, str) and w for w in words):
        raise DataError(f"{name} line {lineno}: 'tokens' must be a non-empty list of non-empty strings (the words)")
    if len(words) > MAX_WORDS:
        raise DataError(f"{name} line {lineno}: {len(words)} words, over the limit of {MAX_WORDS} per row")
    if "labels" not in row:
        return words, None
    tags = row["labels"]
    if not isinstance(tags, list) or len(tags) != len(words):
        raise DataError(f"{name} line {lineno}: 'labels' must be a list with one tag per word "
                        f"({len(words)} words)")
    if not all(isinstance(t, (int, str)) and not isinstance(t, bool) for t in tags):
        raise DataError(f"{name} line {lineno}: each label must be a class index or a label name")
    return words, tags


def read_token_jsonl(path: str | Path, *, max_bytes: int = MAX_TEXT_FILE_BYTES
                     ) -> tuple[list[list[str]], list[list[Any]] | None]:
    """(each row's words, each row's tags or None): the whole file, every line checked.

    Example:
        >>> read_token_jsonl("/nope.jsonl")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        modelpress.errors.DataError: data file nope.jsonl does not exist...
    """
    name = Path(path).name
    words: list[list[str]] = []
    tags: list[list[Any]] = []
    for lineno, row in jsonl_objects(path, max_bytes=max_bytes):
        w, t = _row(row, lineno, name)
        if (t is None) != (not tags) and words:
            raise DataError(f"{name} line {lineno}: 'labels' is on some rows and not others; give it on every "
                            "row or none")
        words.append(w)
        if t is not None:
            tags.append(t)
    return words, tags or None


def tag_index(tag: Any, *, classes: int, label2id: dict[str, int], where: str) -> int:
    """A tag as a class index: an index in range, or a name of the model's ``id2label``.

    Example:
        >>> tag_index("B-PER", classes=3, label2id={"O": 0, "B-PER": 1}, where="ner.jsonl")
        1
    """
    if isinstance(tag, int):
        if not 0 <= tag < classes:
            raise DataError(f"{where}: label {tag} is outside the model's {classes} classes (0..{classes - 1})")
        return tag
    if tag not in label2id:
        raise DataError(f"{where}: label {str(tag)[:60]!r} is not one of the model's classes (id2label: "
                        f"{', '.join(sorted(label2id)[:30])})")
    return label2id[tag]


def token_jsonl_problems(path: str | Path, *, classes: int | None, label_names: set[str] | frozenset[str],
                         read_limit: int = 64 * 1024**2) -> list[str]:
    """What submit refuses in a token classifier's JSONL file (the worker's reader's rules, and tags against
    the config's classes); files over ``read_limit`` bytes are left to the worker.

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "e.jsonl")
        >>> _ = open(f, "w").write('{"text": "a b"}\\n')
        >>> token_jsonl_problems(f, classes=2, label_names=set())[0][:51]
        "data file e.jsonl line 1: unknown field(s) ['text']"
    """
    problems, read = read_at_submit(path, read_token_jsonl, read_limit=read_limit)
    if problems or read is None:
        return problems
    _, tags = read
    name = Path(path).name
    if tags is None or classes is None:
        return []
    label2id = {n: 0 for n in label_names}
    for i, row in enumerate(tags, 1):
        for t in row:
            try:
                tag_index(t, classes=classes, label2id=label2id, where=f"data file {name} row {i}")
            except DataError as e:
                return [str(e)]
    return []


__all__ = ["MAX_WORDS", "NOT_A_WORD", "UNLABELLED_WORD", "read_token_jsonl", "tag_index", "token_jsonl_problems"]

"""JSONL rows for an extractive question-answering model: ``{"question", "context", "answer"?}``, without torch.

``answer``, when given, is the answer's text as it appears in ``context`` (its first occurrence), or an object
``{"text", "start"}`` naming the character where it starts, as SQuAD does. Every row of a file has an answer or
none does. The worker's reader (``read_qa_jsonl``) and submit's check (``qa_jsonl_problems``) apply the same
rules.

Example:
    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "qa.jsonl")
    >>> _ = open(f, "w").write('{"question": "who wrote?", "context": "Ada wrote it", "answer": "Ada"}\\n')
    >>> read_qa_jsonl(f)
    ([('who wrote?', 'Ada wrote it')], [(0, 3)])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelpress.errors import DataError
from modelpress.optimize.sources.data_checks import MAX_TEXT_FILE_BYTES, jsonl_objects, read_at_submit


def _answer(row: dict[str, Any], lineno: int, name: str) -> tuple[int, int] | None:
    """The answer's character span ``(start, end)`` in the context, or None when the row has none."""
    if "answer" not in row:
        return None
    a, context = row["answer"], row["context"]
    if isinstance(a, str):
        text, start = a, context.find(a) if a else -1
    elif isinstance(a, dict) and isinstance(a.get("text"), str) and isinstance(a.get("start"), int):
        text, start = a["text"], a["start"]
        if context[start:start + len(text)] != text:
            raise DataError(f"{name} line {lineno}: answer.text is not the context's text at answer.start ({start})")
    else:
        raise DataError(f"{name} line {lineno}: 'answer' must be the answer's text, or {{\"text\", \"start\"}}")
    if not text or start < 0:
        raise DataError(f"{name} line {lineno}: the answer {text[:60]!r} is not in the context (extractive question "
                        "answering: the answer is a span of the context)")
    return start, start + len(text)


def read_qa_jsonl(path: str | Path, *, max_bytes: int = MAX_TEXT_FILE_BYTES
                  ) -> tuple[list[tuple[str, str]], list[tuple[int, int]] | None]:
    """(each row's (question, context), each row's answer character span or None): every line checked.

    Example:
        >>> read_qa_jsonl("/nope.jsonl")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        modelpress.errors.DataError: data file nope.jsonl does not exist...
    """
    name = Path(path).name
    pairs: list[tuple[str, str]] = []
    spans: list[tuple[int, int]] = []
    for lineno, row in jsonl_objects(path, max_bytes=max_bytes):
        if not all(isinstance(row.get(k), str) and row[k] for k in ("question", "context")):
            raise DataError(f"{name} line {lineno}: each row must be an object with a 'question' and a 'context' "
                            "(non-empty strings)")
        extra = set(row) - {"question", "context", "answer"}
        if extra:
            raise DataError(f"{name} line {lineno}: unknown field(s) {sorted(extra)}; allowed: question, context, "
                            "answer")
        span = _answer(row, lineno, name)
        if (span is None) != (not spans) and pairs:
            raise DataError(f"{name} line {lineno}: 'answer' is on some rows and not others; give it on every row "
                            "or none")
        pairs.append((row["question"], row["context"]))
        if span is not None:
            spans.append(span)
    return pairs, spans or None


def qa_jsonl_problems(path: str | Path, *, read_limit: int = 64 * 1024**2) -> list[str]:
    """What submit refuses in a question-answering JSONL file (the worker's reader's rules); files over
    ``read_limit`` bytes are left to the worker.

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "e.jsonl")
        >>> _ = open(f, "w").write('{"question": "q?", "context": "abc", "answer": "x"}\\n')
        >>> qa_jsonl_problems(f)[0][:57]
        "data file e.jsonl line 1: the answer 'x' is not in the co"
    """
    return read_at_submit(path, read_qa_jsonl, read_limit=read_limit)[0]


__all__ = ["qa_jsonl_problems", "read_qa_jsonl"]

"""An ``hf:`` model's rows for the tasks whose rows are not plain text: a token classifier's words (``token_rows``) and
an extractive question-answering model's question/context pairs (``qa_rows``), tokenized by the folder's fast
tokenizer into the tensors the model takes and the marks its metric reads (``outputs.token_metric``,
``outputs.span_metric``). ``hf.HFSource`` calls these; text rows (``hf.HFSource._encode_rows``) share
``store_chunk``.

Example:
    >>> x, marks, rows, answered = encode_qa(tok, "qa.jsonl", 128)   # doctest: +SKIP
    >>> [t.shape for t in x], answered                               # doctest: +SKIP
    ([torch.Size([40, 128]), torch.Size([40, 128])], True)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from modelpress.errors import DataError, ModelLoadError


def store_chunk(x: tuple[torch.Tensor, ...], names: list[str], enc: Any, start: int, total: int
           ) -> tuple[tuple[torch.Tensor, ...], list[str]]:
    """Copy one chunk of the tokenizer's tensors into ``x`` at row ``start``, making ``x`` (``total`` rows) at the
    first chunk: tensors made once, because the tokenizer's Python lists for a whole file cost many times more."""
    if not x:
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]
        x = tuple(torch.empty(total, enc[n].shape[1], dtype=enc[n].dtype) for n in names)
    for t, n in zip(x, names):
        t[start:start + enc[n].shape[0]] = enc[n]
    return x, names


def need_fast(tok: Any, what: str) -> None:
    if not getattr(tok, "is_fast", False):
        raise ModelLoadError(f"{what} are mapped to sub-tokens by a fast tokenizer (tokenizer.json); save the "
                             "folder's tokenizer with a fast tokenizer class")


def encode_words(tok: Any, path: str, max_length: int, label2id: dict[str, int], num_labels: int
                  ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, list[Any], bool]:
    """A token classifier's rows (``token_rows``): (token tensors, word positions per token, each row's
    words, whether the file has tags).

    Positions are what the metric reads (``outputs.token_metric``): at each word's first sub-token its
    tag index, or ``UNLABELLED_WORD`` without tags; ``NOT_A_WORD`` everywhere else. A word cut off by
    ``max_length`` is not judged.
    """
    from modelpress.optimize.limits import check_text_tokens, current_limits
    from modelpress.optimize.sources.token_rows import NOT_A_WORD, UNLABELLED_WORD, read_token_jsonl, tag_index

    need_fast(tok, "a token classifier's words")
    words, tags = read_token_jsonl(path)
    name = Path(path).name
    check_text_tokens(len(words), max_length, name, current_limits())
    x: tuple[torch.Tensor, ...] = ()
    names: list[str] = []
    pos = torch.full((len(words), max_length), NOT_A_WORD, dtype=torch.long)
    chunk = 1024
    for i in range(0, len(words), chunk):
        enc = tok(words[i:i + chunk], is_split_into_words=True, padding="max_length", truncation=True,
                  max_length=max_length, return_tensors="pt")
        x, names = store_chunk(x, names, enc, i, len(words))
        for r in range(len(words[i:i + chunk])):
            row, seen = i + r, set()
            for j, w in enumerate(enc.word_ids(r)):
                if w is None or w in seen:
                    continue
                seen.add(w)
                pos[row, j] = (UNLABELLED_WORD if tags is None else
                               tag_index(tags[row][w], classes=num_labels, label2id=label2id,
                                         where=f"{name} row {row + 1}"))
    return x, pos, [tuple(w) for w in words], tags is not None


def encode_qa(tok: Any, path: str, max_length: int
               ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, list[Any], bool]:
    """A question-answering model's rows (``qa_rows``): (token tensors, each token's marks, each row's
    (question, context), whether the file has answers).

    Marks (``outputs.CONTEXT``, ``GOLD_START``, ``GOLD_END`` bits) say which sub-tokens are the context's
    (an answer is taken from those only) and where the answer starts and ends. A context longer than the
    window is cut (``only_second``); a row whose answer was cut off has no gold marks and is left out of
    ``span_f1`` (the description counts them).
    """
    from modelpress.optimize.limits import check_text_tokens, current_limits
    from modelpress.optimize.outputs import CONTEXT, GOLD_END, GOLD_START
    from modelpress.optimize.sources.qa_rows import read_qa_jsonl

    need_fast(tok, "a question-answering model's answers")
    pairs, spans = read_qa_jsonl(path)
    name = Path(path).name
    check_text_tokens(len(pairs), max_length, name, current_limits())
    x: tuple[torch.Tensor, ...] = ()
    names: list[str] = []
    marks = torch.zeros(len(pairs), max_length, dtype=torch.long)
    chunk = 1024
    for i in range(0, len(pairs), chunk):
        part = pairs[i:i + chunk]
        try:
            enc = tok([q for q, _ in part], [c for _, c in part], truncation="only_second", padding="max_length",
                      max_length=max_length, return_offsets_mapping=True, return_tensors="pt")
        except Exception as e:  # noqa: BLE001 - a question longer than the window is the usual cause
            raise DataError(f"{name}: rows {i + 1}-{i + len(part)} could not be tokenized at max_length "
                            f"{max_length} ({type(e).__name__}: {str(e)[:200]}); is a question longer than "
                            "max_length?") from None
        x, names = store_chunk(x, names, enc, i, len(pairs))
        offsets = enc["offset_mapping"]
        for r in range(len(part)):
            row = i + r
            seq = enc.sequence_ids(r)
            ctx = [j for j, sid in enumerate(seq) if sid == 1]
            marks[row, ctx] = CONTEXT
            if spans is None:
                continue
            start, end = spans[row]
            first = [j for j in ctx if int(offsets[r, j, 0]) <= start < int(offsets[r, j, 1])]
            last = [j for j in ctx if int(offsets[r, j, 0]) < end <= int(offsets[r, j, 1])]
            if first and last and first[0] <= last[-1]:
                marks[row, first[0]] |= GOLD_START
                marks[row, last[-1]] |= GOLD_END
    return x, marks, list(pairs), spans is not None


__all__ = ["encode_qa", "encode_words", "need_fast", "store_chunk"]

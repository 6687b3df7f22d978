"""Models with several outputs (a detector's boxes, landmarks and score): how they are scored and carried.

The pipeline passes a model's outputs around as one float tensor per batch of rows, so that predicting,
concatenating batches, slicing rows and comparing a reload stay the same for every model. A model returning
several tensors has them *packed*: each output is flattened per row and the outputs are laid side by side
(``pack``). Artifacts are untouched by this: they return the program's own outputs, in its own order.

``OutputsMetric`` is such a model's metric: one metric per output, each compared with the float model's same
output (or, for an output with labels, with its labels), and a stated *primary* output whose metric carries
the budget and is the job's reported metric. Every output's before/after is recorded beside it. Cosine of an
output with one value per row (a score) is taken over the column, all rows as one vector: per row it would
only compare signs.

Example:
    >>> import torch
    >>> m = OutputsMetric(outputs=(OutputSpec("boxes", 4, "cosine"), OutputSpec("face", 2, "accuracy", 0)),
    ...                   primary=1)
    >>> out = pack((torch.ones(3, 4), torch.tensor([[0., 1.], [1., 0.], [0., 1.]])))
    >>> tuple(out.shape), str(m), round(m.score(out, labels=torch.tensor([[1], [0], [0]]), reference=out), 4)
    ((3, 6), 'accuracy[face]', 0.6667)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import nn

OutputMetricName = Literal["accuracy", "top1_agreement", "cosine"]


@dataclass(frozen=True)
class OutputSpec:
    """One output: its name, its values per row (flattened), its metric, and its column in the packed labels."""

    name: str
    width: int
    metric: OutputMetricName
    label_column: int | None = None  # None: judged against the float model's same output


@dataclass(frozen=True)
class OutputsMetric:
    """The metric of a model with several outputs: each output's metric, and the primary one's as the job's."""

    outputs: tuple[OutputSpec, ...]
    primary: int

    def __post_init__(self) -> None:
        if not 0 <= self.primary < len(self.outputs):
            raise ValueError(f"primary output {self.primary} is not one of the {len(self.outputs)} outputs")

    def __str__(self) -> str:  # the job row's metric name: what the reported number is
        p = self.outputs[self.primary]
        return f"{p.metric}[{p.name}]"

    @property
    def columns(self) -> list[slice]:
        """Each output's columns in a packed tensor."""
        out, start = [], 0
        for o in self.outputs:
            out.append(slice(start, start + o.width))
            start += o.width
        return out

    def without_labels(self) -> "OutputsMetric":
        """The same metric on rows without labels: labelled outputs judged by agreement with float instead."""
        return OutputsMetric(tuple(OutputSpec(o.name, o.width, "top1_agreement" if o.metric == "accuracy" else o.metric)
                                   for o in self.outputs), self.primary)

    def each(self, outputs: torch.Tensor, *, labels: torch.Tensor | None,
             reference: torch.Tensor | None) -> list[dict[str, Any]]:
        """Every output's metric: ``[{"output", "metric", "value"}]``, in the program's order."""
        if outputs.shape[-1] != sum(o.width for o in self.outputs):
            raise RuntimeError(f"{outputs.shape[-1]} output values per row, and the outputs hold "
                               f"{sum(o.width for o in self.outputs)}")
        rows = []
        for o, cols in zip(self.outputs, self.columns):
            y = labels[:, o.label_column] if (o.label_column is not None and labels is not None) else None
            metric = o.metric if (o.metric != "accuracy" or y is not None) else "top1_agreement"
            got, ref = outputs[:, cols], (reference[:, cols] if reference is not None else None)
            if metric == "cosine" and o.width == 1 and ref is not None:
                # One value per row (a score): cosine per row would only compare signs; take the column instead.
                got, ref = got.T, ref.T
            rows.append({"output": o.name, "metric": metric,
                         "value": single_metric(metric, got, labels=y, reference=ref)})
        return rows

    def score(self, outputs: torch.Tensor, *, labels: torch.Tensor | None, reference: torch.Tensor | None) -> float:
        """The primary output's metric (what the budget is checked on)."""
        return float(self.each(outputs, labels=labels, reference=reference)[self.primary]["value"])


def single_metric(metric: str, outputs: torch.Tensor, *, labels: torch.Tensor | None,
                  reference: torch.Tensor | None) -> float:
    """Accuracy vs labels, or fidelity (top-1 agreement / cosine) vs the float model's outputs.

    Example:
        >>> single_metric("top1_agreement", torch.eye(2), labels=None, reference=torch.eye(2))
        1.0
    """
    if metric in ("token_accuracy", "token_agreement"):
        return token_metric(metric, outputs, labels=labels, reference=reference)
    if metric in ("span_f1", "span_agreement"):
        return span_metric(metric, outputs, labels=labels, reference=reference)
    if metric == "accuracy":
        if labels is None:
            raise ValueError("accuracy needs labels")
        return float((outputs.argmax(-1) == labels).float().mean())
    if reference is None:
        raise ValueError(f"{metric} needs the float model's outputs")
    if metric == "top1_agreement":
        return float((outputs.argmax(-1) == reference.argmax(-1)).float().mean())
    if metric == "cosine":
        return float(nn.functional.cosine_similarity(outputs, reference, dim=-1).mean())
    raise ValueError(f"unknown metric {metric!r}")


def token_metric(metric: str, outputs: torch.Tensor, *, labels: torch.Tensor | None,
                 reference: torch.Tensor | None) -> float:
    """A token classifier's metric over its words: per-token logits ``[rows, tokens, classes]`` (or flattened
    per row) judged at each word's first sub-token.

    ``labels`` marks those positions per row and token (``sources.token_rows``): a tag index (≥ 0), -1 for a
    word the file gives no tag, anything lower for a position that is not a word (special tokens, padding,
    later sub-tokens). ``token_accuracy`` is the share of tagged words whose top class is their tag;
    ``token_agreement`` the share of words whose top class is the float model's. Without ``labels`` (rows that
    carry no positions), agreement is over every token.

    Example:
        >>> out = torch.tensor([[[0., 1.], [1., 0.], [0., 1.]]])
        >>> pos = torch.tensor([[1, -100, 0]])
        >>> token_metric("token_accuracy", out, labels=pos, reference=None)
        0.5
        >>> token_metric("token_agreement", out, labels=pos, reference=out.flip(-1))
        0.0
    """
    if labels is not None:
        outputs = outputs.reshape(*labels.shape, -1)
    top = outputs.argmax(-1)
    if metric == "token_accuracy":
        tagged = labels >= 0 if labels is not None else None
        if tagged is None or not bool(tagged.any()):
            raise ValueError("token_accuracy needs rows with tags ('labels' in the data)")
        return float((top[tagged] == labels[tagged]).float().mean())  # type: ignore[index]
    if reference is None:
        raise ValueError("token_agreement needs the float model's outputs")
    ref_top = reference.reshape(outputs.shape).argmax(-1)
    words = labels >= -1 if labels is not None else torch.ones_like(top, dtype=torch.bool)
    if not bool(words.any()):
        raise ValueError("token_agreement: these rows have no words")
    return float((top[words] == ref_top[words]).float().mean())


#: Bits of a question-answering row's token marks (``span_metric``).
CONTEXT, GOLD_START, GOLD_END = 1, 2, 4
#: Longest answer considered, in sub-tokens (transformers' question-answering pipeline's default is 15 words).
MAX_ANSWER_TOKENS = 30


def best_spans(outputs: torch.Tensor, marks: torch.Tensor) -> torch.Tensor:
    """Each row's answer span ``[start, end]`` (sub-token indices, inclusive): the context span of at most
    ``MAX_ANSWER_TOKENS`` with the highest start + end logit. ``outputs`` is packed start then end logits.

    Example:
        >>> out = torch.tensor([[0., 5., 0., 0., 0., 0., 9., 0.]])   # start logits, then end logits
        >>> best_spans(out, torch.tensor([[0, 1, 1, 1]])).tolist()
        [[1, 2]]
    """
    n, length = marks.shape
    logits = outputs.reshape(n, 2, length)
    spans = torch.zeros(n, 2, dtype=torch.long)
    offsets = torch.arange(length)
    band = (offsets[None, :] >= offsets[:, None]) & (offsets[None, :] - offsets[:, None] < MAX_ANSWER_TOKENS)
    for i in range(0, n, 64):  # rows x length² scores: in chunks
        s, e, ctx = logits[i:i + 64, 0], logits[i:i + 64, 1], (marks[i:i + 64] & CONTEXT) > 0
        ok = band[None] & ctx[:, :, None] & ctx[:, None, :]
        scores = (s[:, :, None] + e[:, None, :]).masked_fill(~ok, float("-inf"))
        flat = scores.flatten(1).argmax(1)
        spans[i:i + 64, 0], spans[i:i + 64, 1] = flat // length, flat % length
    return spans


def _span_f1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    overlap = (torch.minimum(a[:, 1], b[:, 1]) - torch.maximum(a[:, 0], b[:, 0]) + 1).clamp(min=0).float()
    p, r = overlap / (a[:, 1] - a[:, 0] + 1).float(), overlap / (b[:, 1] - b[:, 0] + 1).float()
    return torch.where(overlap > 0, 2 * p * r / (p + r).clamp(min=1e-12), torch.zeros_like(overlap))


def span_metric(metric: str, outputs: torch.Tensor, *, labels: torch.Tensor | None,
                reference: torch.Tensor | None) -> float:
    """An extractive question-answering model's metric: the F1 of its answer span's sub-tokens against the
    gold span (``span_f1``, over rows whose gold answer is inside the model's window) or against the float
    model's span (``span_agreement``, every row).

    ``labels`` marks each row's sub-tokens (``CONTEXT``, ``GOLD_START``, ``GOLD_END`` bits): answers are taken
    from the context only, as transformers' pipeline does. F1 is over sub-tokens, not SQuAD's normalised words:
    comparing the same model before and after, the two move together.

    Example:
        >>> out = torch.tensor([[0., 5., 0., 0., 0., 0., 9., 0.]])
        >>> span_metric("span_f1", out, labels=torch.tensor([[0, 1 | 2, 1 | 4, 1]]), reference=None)
        1.0
    """
    if labels is None:  # rows without marks (calibration rows): any sub-token may answer
        labels = torch.full((outputs.shape[0], outputs.shape[1] // 2), CONTEXT, dtype=torch.long)
    spans = best_spans(outputs, labels)
    if metric == "span_f1":
        gold_start, gold_end = (labels & GOLD_START) > 0, (labels & GOLD_END) > 0
        has = gold_start.any(1) & gold_end.any(1)
        if not bool(has.any()):
            raise ValueError("span_f1 needs rows whose answer is inside the model's window")
        gold = torch.stack([gold_start.float().argmax(1), gold_end.float().argmax(1)], 1)
        return float(_span_f1(spans[has], gold[has]).mean())
    if reference is None:
        raise ValueError("span_agreement needs the float model's outputs")
    return float(_span_f1(spans, best_spans(reference, labels)).mean())


def to_float(t: torch.Tensor) -> torch.Tensor:
    """An output as a float tensor (int8 outputs dequantized)."""
    return (t.dequantize() if t.is_quantized else t).float()


def pack(out: Any) -> torch.Tensor:
    """One batch's outputs as one float tensor: a single output as it is, several side by side per row.

    Example:
        >>> pack([torch.zeros(2, 3), torch.ones(2, 1, 2)]).shape
        torch.Size([2, 5])
    """
    if isinstance(out, torch.Tensor):
        return to_float(out)
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)) and out and all(isinstance(t, torch.Tensor) for t in out):
        if len(out) == 1:
            return to_float(out[0])
        n = int(out[0].shape[0]) if out[0].ndim else -1
        if n < 0 or any(t.ndim == 0 or int(t.shape[0]) != n for t in out):
            raise RuntimeError("every output needs the batch as its first dimension, got shapes "
                               f"{[tuple(t.shape) for t in out]}")
        return torch.cat([to_float(t).reshape(n, -1) for t in out], dim=1)
    raise RuntimeError(f"a model output must be a tensor or a tuple of tensors, got {type(out).__name__}")


def output_metric(outputs: Sequence[torch.Tensor], names: Sequence[str], *, primary: str | None,
                  primary_metric: str | None, labelled: dict[str, int]) -> OutputsMetric:
    """The ``OutputsMetric`` of a program whose outputs on a probe batch are ``outputs``.

    ``primary`` names the output carrying the budget (the first when None); ``primary_metric`` overrides its
    metric; ``labelled`` maps an output's name to its column in the packed labels. An output with labels is
    judged by accuracy, the others by cosine to the float model's same output.

    Example:
        >>> m = output_metric([torch.zeros(2, 4), torch.zeros(2, 3)], ["boxes", "cls"], primary="cls",
        ...                   primary_metric="top1_agreement", labelled={})
        >>> str(m), [o.width for o in m.outputs]
        ('top1_agreement[cls]', [4, 3])
    """
    if primary is not None and primary not in names:
        raise ValueError(f"primary_output {primary!r} is not an output of the program; its outputs are {list(names)}")
    p = names.index(primary) if primary is not None else 0
    specs = []
    for i, (name, t) in enumerate(zip(names, outputs)):
        col = labelled.get(name)
        metric = "accuracy" if col is not None else "cosine"
        if i == p and primary_metric is not None:
            metric = primary_metric
        specs.append(OutputSpec(name, int(t[0].numel()) if t.ndim else 1, metric, col))  # type: ignore[arg-type]
    return OutputsMetric(tuple(specs), p)


__all__ = ["CONTEXT", "GOLD_END", "GOLD_START", "MAX_ANSWER_TOKENS", "OutputMetricName", "best_spans", "span_metric", "OutputSpec", "OutputsMetric", "output_metric", "pack", "single_metric", "to_float",
           "token_metric"]

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
    >>> tuple(out.shape), str(m), m.score(out, labels=torch.tensor([[1], [0], [0]]), reference=out)
    ((3, 6), 'accuracy[face]', 0.6666666865348206)
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


__all__ = ["OutputMetricName", "OutputSpec", "OutputsMetric", "output_metric", "pack", "single_metric", "to_float"]

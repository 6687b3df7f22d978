"""What the pipeline knows about a model: ``ModelSpec`` (how to build it, its data, metric and inputs) and ``TaskData``.

Every source gives a ``ModelSpec``: the registered factories (the built-in zoo, ``modelpress.zoo``, and
allow-listed ``module:function`` factories), HF folders, torchvision/timm names and ``.pt2`` archives.
This module holds only the types; it imports torch and, of modelpress, only ``outputs`` (also types).

Example:
    >>> import torch
    >>> spec = ModelSpec(name="tiny", version=1, build=lambda: torch.nn.Linear(2, 2),
    ...                  data=lambda: TaskData(eval_inputs=torch.zeros(1, 2), eval_labels=None,
    ...                                        calib_inputs=torch.zeros(1, 2)),
    ...                  metric="top1_agreement", make_input=lambda b: torch.zeros(b, 2))
    >>> spec.builtin_id
    'builtin:tiny:v1'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn

from modelpress.optimize.outputs import OutputsMetric

Metric = Literal["accuracy", "top1_agreement", "cosine", "token_accuracy", "token_agreement", "span_f1", "perplexity",
                 "span_agreement"]
Inputs = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class TaskData:
    """Held-out evaluation data, calibration inputs and (optionally) training data.

    ``eval_labels`` is None for models judged by fidelity to the float model. ``val_inputs`` (and
    ``val_labels``) are rows held apart from eval for choices (how many layers the fallback keeps
    float): nothing is chosen on the rows whose metric is reported. Without them, choices use the
    calibration inputs and fidelity to the float model.
    """

    eval_inputs: Inputs
    eval_labels: torch.Tensor | None
    calib_inputs: Inputs
    train_inputs: Inputs | None = None
    train_labels: torch.Tensor | None = None
    description: str = ""
    # Rows for choices (fallback, sensitivity, early stopping): disjoint from eval, never reported.
    val_inputs: Inputs | None = None
    val_labels: torch.Tensor | None = None


@dataclass(frozen=True)
class ModelSpec:
    """Everything the pipeline needs to know about one model."""

    name: str
    version: int
    build: Callable[[], nn.Module]
    data: Callable[[], TaskData]
    # A program with several outputs has an ``OutputsMetric``: each output's metric, the primary one's reported.
    metric: Metric | OutputsMetric
    make_input: Callable[[int], Inputs]
    latency_batches: tuple[int, ...] = (1, 64)
    # Fills a freshly built model with the built-in weights (seeded init, or trained weights shipped as
    # package data), given a cache dir; None means the user must supply weights.
    pretrained: Callable[[nn.Module, Path | None], None] | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # The package-data file (``zoo/data/``) ``pretrained`` loads, when the built-in weights are
    # trained ones: its sha256 is part of the content id (``zoo/builtin_weights.py`` says why).
    shipped_weights: str | None = None
    # For training steps: a model with the same parameter names that also takes shorter rows (an ``hf:`` graph
    # exported with a dynamic sequence length), and a function that trims a batch to its longest real row.
    # Training every row at ``max_length`` would spend most of its time on padding. None: train the model itself.
    training_view: Callable[[], tuple[nn.Module, Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]]] | None = None

    @property
    def builtin_id(self) -> str:
        return f"builtin:{self.name}:v{self.version}"


__all__ = ["Inputs", "Metric", "ModelSpec", "TaskData"]

"""The step types of deep compression: ``prune_transformer``, ``prune`` (one level) and ``distill_float``.

Configs only (torch-free, as every step config): their handlers are in ``optimize.techniques``
(``transformer_pruning``, ``prune_level``, ``distill_float``). ``recipes`` imports this module, so parsing a
recipe knows these types.

Example:
    >>> PruneConfig(level=0.5).to_dict()
    {'type': 'prune', 'level': 0.5, 'shape': 'width', 'from_level': 0.0}
"""

from __future__ import annotations

import math

from typing import Literal

from pydantic import Field, model_validator

from modelpress.optimize.steps import StepConfig, register_step


@register_step("prune_transformer")
class TransformerPruneConfig(StepConfig):
    """Cut whole layers, attention heads and FFN neurons of a transformer, ranked by importance on data.

    Importance is measured on the job's train rows (else its validation rows), never on eval rows: a
    layer's by how little it changes the hidden state (1 − cosine of its input and output), a head's and
    a neuron's by the norm of what it feeds the next projection times that projection's weights. Every kept
    layer keeps the same number of heads and neurons, so the runtimes' kernels see regular shapes.

    Example:
        >>> TransformerPruneConfig(layers=2, heads=0.25, ffn=0.5).ffn
        0.5
    """

    layers: int = Field(default=0, ge=0, le=64, description="Layers dropped (never the last).")
    heads: float = Field(default=0.0, ge=0.0, lt=1.0, description="Fraction of attention heads cut per kept layer.")
    ffn: float = Field(default=0.0, ge=0.0, lt=1.0, description="Fraction of FFN neurons cut per kept layer.")
    rows: int = Field(default=256, ge=8, le=4096, description="Rows importance is measured on (train, else validation).")
    multiple_of: int = Field(default=16, ge=1, le=256, description="Kept FFN neurons are a multiple of this.")
    refit: bool = Field(default=True, description="Refit each cut layer's next projection by least squares on the "
                                                  "same rows, so the kept heads and neurons make up for the cut ones.")

    @model_validator(mode="after")
    def _something_to_cut(self) -> "TransformerPruneConfig":
        if not (self.layers or self.heads or self.ffn):
            raise ValueError("cuts nothing: give layers, heads or ffn")
        return self


@register_step("prune")
class PruneConfig(StepConfig):
    """Structured pruning at one ``level``, in whatever form the model has (the knob a recipe's ``search`` turns).

    A transformer (``hf:``): ``shape="width"`` cuts ``level`` of every layer's FFN neurons and ``level / 2`` of
    its heads (``prune_transformer``), ``shape="depth"`` drops ``round(level × (layers − 1))`` layers, and
    ``shape="mixed"`` keeps ``1 − level`` of the float model's time: as many whole layers dropped as that
    allows, the FFNs cut for the rest. A CNN or MLP: ``level`` of the channels of every prunable group
    (``prune_structured``, Torch-Pruning), for width or mixed. What was done is recorded in the step's meta.

    Example:
        >>> PruneConfig(level=0.5).shape
        'width'
    """

    level: float = Field(gt=0.0, lt=0.95, description="How much to cut: the fraction of width (or depth).")
    shape: Literal["width", "depth", "mixed"] = "width"
    from_level: float = Field(default=0.0, ge=0.0, lt=0.95,
                              description="The level the input was already cut to (a search's previous level): "
                                          "the step cuts the rest, so `level` stays a fraction of the float model.")

    @model_validator(mode="after")
    def _cuts_more(self) -> "PruneConfig":
        if self.from_level >= self.level:
            raise ValueError(f"from_level {self.from_level} must be below level {self.level}")
        return self

    def remaining_cut(self, float_fraction: float = 1.0) -> float:
        """The fraction of the *input's* width to cut so that ``float_fraction × level`` of the float model's
        is gone (``float_fraction``: 0.5 for heads, which a width level cuts at half rate).

        Example:
            >>> round(PruneConfig(level=0.4, from_level=0.2).remaining_cut(), 4)
            0.25
        """
        done, want = self.from_level * float_fraction, self.level * float_fraction
        return 1.0 - (1.0 - want) / (1.0 - done)


@register_step("distill_float")
class DistillFloatConfig(StepConfig):
    """Train the current model (pruned, typically) to reproduce the float model: distillation with the
    user's model as teacher, on the job's train rows (labels optional).

    ``loss="auto"``: KL divergence at ``temperature`` for classifier logits, 1 − cosine for embeddings judged
    by cosine, MSE otherwise; train labels, when present, add cross-entropy weighted ``label_weight``. Hidden
    states are matched too (``intermediate_weight``) wherever the student and teacher have a layer of the same
    name and shape. Bounded by ``max_steps`` and ``max_seconds``; every ``validate_every`` steps the metric is
    measured on the validation rows and the best weights so far are kept (and checkpointed: a worker restart
    resumes, it does not start again).

    Example:
        >>> DistillFloatConfig(max_steps=200).loss
        'auto'
    """

    loss: Literal["auto", "kl", "cosine", "mse"] = "auto"
    temperature: float = Field(default=2.0, gt=0.0, le=100.0)
    label_weight: float = Field(default=0.5, ge=0.0, le=1.0, description="Weight of cross-entropy on train labels.")
    intermediate_weight: float = Field(default=1.0, ge=0.0, le=100.0, description="Weight of hidden-state matching.")
    max_steps: int = Field(default=1000, ge=1, le=1_000_000)
    max_seconds: float = Field(default=900.0, gt=0.0, le=86_400.0)
    batch_size: int = Field(default=32, ge=1, le=4096)
    lr: float = Field(default=1e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(default=0.01, ge=0.0, le=1.0)
    validate_every: int = Field(default=50, ge=1, le=1_000_000)
    embeddings: Literal["train", "freeze"] = Field(
        default="train", description="'freeze': the student's embedding tables stay the teacher's (not trained).")
    precision: Literal["float32", "bfloat16", "auto"] = Field(
        default="float32", description="'bfloat16': the student's forward under CPU autocast (fp32 weights, "
                                       "optimizer and validation), faster where the CPU has bf16 arithmetic; "
                                       "'auto': bfloat16 on an x86 CPU with AMX or AVX-512 bf16, else float32.")

    def extended(self, seconds: float) -> "DistillFloatConfig":
        """This step run again for ``seconds`` on the model it trained (a search polishing its chosen level): the
        same settings, steps bounded at the rate this step's own bounds allow.

        Example:
            >>> c = DistillFloatConfig(max_steps=6000, max_seconds=420).extended(210)
            >>> c.max_seconds, c.max_steps
            (210.0, 3000)
        """
        steps = max(1, math.ceil(self.max_steps * seconds / self.max_seconds))
        return self.model_copy(update={"max_seconds": float(seconds), "max_steps": min(steps, 1_000_000)})


__all__ = ["DistillFloatConfig", "PruneConfig", "TransformerPruneConfig"]

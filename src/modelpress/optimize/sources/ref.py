"""What a user's model is: the reference carried from submit to the worker (torch-free).

A ``ModelRef`` names where a model comes from (``kind``) and the files it needs. The same frozen object
travels three stages, only its path fields change: the user's paths at submit, content-addressed store
refs in the job row, local cache paths on the worker (``with_paths``). ``DataRef`` names the held-out
evaluation file and, optionally, a separate calibration file and a training file.

This module imports no torch: the CLI and the API build and validate refs cheaply.

Example:
    >>> ref = parse_model_ref("hf:models/bert", data=DataRef(eval="data/eval.jsonl"))
    >>> ref.kind, ref.path
    ('hf', 'models/bert')
    >>> ModelRef.from_dict(ref.to_dict()) == ref
    True
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelpress.errors import DataError, UserInputError
from modelpress.optimize.limits import check_latency_batches, check_text_length, current_limits

REF_VERSION = 1
SourceKind = Literal["registered", "hf", "torchvision", "timm", "export"]
# Kinds whose model is the user's own files: they must come with data to measure on.
USER_KINDS: tuple[str, ...] = ("hf", "torchvision", "timm", "export")
_PREFIXES: tuple[str, ...] = ("hf", "torchvision", "timm", "export")


class ModelRefError(UserInputError, ValueError):
    """A model reference that cannot be parsed or is incomplete; the message names the field."""


class DataRef(BaseModel):
    """Held-out evaluation data and, optionally, a separate calibration file and a training file.

    Without ``calibration``, a seeded part of ``eval`` is set aside for calibration and validation (and is
    then not part of the reported metric); see ``optimize.sources.data``. ``train`` is in the eval data's
    format (labels optional) and is what training steps (``finetune``, ``qat``, ``distill``...) learn from;
    its rows that also appear in the eval file are dropped on the worker.

    Example:
        >>> DataRef(eval="eval.jsonl", train="train.jsonl").calibration is None
        True
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    eval: str = Field(min_length=1)
    calibration: str | None = None
    train: str | None = Field(default=None, min_length=1)


class ModelRef(BaseModel):
    """One model to optimize: its source kind, its name, its files, its data and measuring options."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: SourceKind
    name: str = Field(min_length=1, max_length=4096)
    path: str | None = None
    weights: str | None = None
    data: DataRef | None = None
    preprocess: dict[str, Any] | None = None
    metric: Literal["accuracy", "top1_agreement", "cosine"] | None = None
    max_length: int | None = Field(default=None, gt=0)
    latency_batches: tuple[int, ...] = (1, 32)
    content_sha256: str | None = None
    # An ``export:`` program with several outputs: the one whose metric carries the budget (default: the first).
    primary_output: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")

    # Both are decoded-size limits (``optimize.limits``, settings): every text row is padded to max_length,
    # and each latency batch is that many rows repeated from the data. Checked wherever a ref is made,
    # so at submit and again on the worker, which rebuilds the ref from the job row.
    @field_validator("latency_batches")
    @classmethod
    def _batches(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v:
            raise ValueError("must be one or more batch sizes")
        try:
            check_latency_batches(v, current_limits())
        except DataError as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("max_length")
    @classmethod
    def _max_length(cls, v: int | None) -> int | None:
        if v is not None:
            try:
                check_text_length(v, current_limits())
            except DataError as e:
                raise ValueError(str(e)) from None
        return v

    def model_post_init(self, _ctx: Any) -> None:
        # Checked here (not per field) because they relate fields to the kind.
        if self.kind in ("hf", "export") and not self.path:
            raise ValueError(f"a {self.kind} model needs a path (the {'folder' if self.kind == 'hf' else '.pt2 file'})")
        if self.kind in ("torchvision", "timm") and not self.weights:
            raise ValueError(f"a {self.kind} model needs a weights file (weights are never downloaded)")
        if self.primary_output is not None and self.kind != "export":
            raise ValueError("primary_output is for an export: program with several outputs")
        if self.kind in USER_KINDS and self.data is None:
            raise ValueError(f"a {self.kind} model needs data: {{eval: ..., calibration: ...}} to be measured on")

    # --- (de)serialisation: versioned JSON, like recipes ---
    def to_dict(self) -> dict[str, Any]:
        """JSON-able, versioned: ``{"_version": 1, "kind": ..., ...}``."""
        return {"_version": REF_VERSION, **self.model_dump(mode="json")}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Any) -> "ModelRef":
        """Inverse of ``to_dict``; refuses unknown versions and fields with a ``ModelRefError``."""
        if not isinstance(d, dict):
            raise ModelRefError(f"model reference: expected a mapping, got {type(d).__name__}")
        d = dict(d)
        version = d.pop("_version", REF_VERSION)
        if version != REF_VERSION:
            raise ModelRefError(f"model reference: version {version!r} is not supported (expected {REF_VERSION})")
        try:
            return cls.model_validate(d)
        except ValidationError as e:
            raise ModelRefError(_fmt(e)) from None

    def with_paths(self, **fields: Any) -> "ModelRef":
        """A copy with some fields replaced (e.g. store refs → local paths), validated again."""
        return ModelRef.from_dict({**self.to_dict(), **fields})

    @property
    def has_train(self) -> bool:
        """Whether the ref comes with a training file (``data.train``): training steps need one."""
        return self.data is not None and self.data.train is not None

    @property
    def display_name(self) -> str:
        """A short name for tables: ``hf:bert``, ``torchvision:resnet18``, ``mlp``."""
        if self.kind == "registered":
            return self.name
        base = self.name.rstrip("/").rsplit("/", 1)[-1] if self.kind in ("hf", "export") else self.name
        return f"{self.kind}:{base}"


def _fmt(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "model reference: " + "; ".join(parts)


def parse_model_ref(text: str, **fields: Any) -> ModelRef:
    """Parse ``hf:PATH``, ``torchvision:NAME``, ``timm:NAME``, ``export:PATH.pt2`` or a registered name.

    ``module:function`` (any other prefix) is a registered factory, allow-listed where it is resolved.
    ``fields`` fill the rest (``weights``, ``data``, ``preprocess``, ...).

    Example:
        >>> parse_model_ref("torchvision:resnet18", weights="r18.safetensors",
        ...                 data={"eval": "images/"}).name
        'resnet18'
        >>> parse_model_ref("mlp").kind
        'registered'
    """
    if not isinstance(text, str) or not text.strip():
        raise ModelRefError("model reference: empty model name")
    text = text.strip()
    prefix, sep, rest = text.partition(":")
    if sep and prefix in _PREFIXES:
        if not rest:
            raise ModelRefError(f"model reference {text!r}: nothing after '{prefix}:'")
        d: dict[str, Any] = {"kind": prefix, "name": rest}
        if prefix in ("hf", "export"):
            d["path"] = rest
            if prefix == "export" and not rest.endswith(".pt2"):
                raise ModelRefError(f"model reference {text!r}: an export model is a .pt2 file "
                                    "(written by torch.export.save)")
    else:
        d = {"kind": "registered", "name": text}
    if isinstance(fields.get("data"), BaseModel):
        fields["data"] = fields["data"].model_dump()
    return ModelRef.from_dict({**d, **{k: v for k, v in fields.items() if v is not None}})


# Steps that need something a source does not have. Torch-free so that submit can refuse early;
# the sources' ``supports`` methods answer from this table.
NEEDS_TRAINING: tuple[str, ...] = ("finetune", "qat", "distill", "distill_float")


def unsupported_reason(kind: str, step_type: str, *, has_train: bool = False) -> str | None:
    """Why ``step_type`` cannot run on a model of ``kind``, or None when it can.

    ``has_train`` says whether the model comes with a training file (``ModelRef.has_train``): steps that
    train (``NEEDS_TRAINING``) run on a user's model only with one. A registered model brings its own data.

    Example:
        >>> unsupported_reason("export", "prune_structured") is not None
        True
        >>> unsupported_reason("torchvision", "quantize_static") is None
        True
        >>> unsupported_reason("hf", "finetune", has_train=True) is None
        True
    """
    if kind == "registered":
        return None
    if step_type in NEEDS_TRAINING and not has_train:
        return (f"step {step_type!r} trains the model, and this {kind} model comes with no training set; add "
                "data: {train: ...} (in the eval data's format, labels optional), or use quantize_dynamic, "
                "quantize_static or prune_l1_unstructured")
    if step_type in ("prune_structured", "prune", "prune_transformer") and kind == "export":
        return (f"step {step_type!r} removes channels, heads or layers, and an exported program is a flat graph "
                "whose shapes are fixed where it was exported; prune before exporting, or use prune_l1_unstructured "
                "(fine-tuning and distill_float do run on it, with a train file)")
    if step_type == "prune_structured" and kind == "hf":
        return ("step 'prune_structured' is not supported on transformers models (attention heads are coupled "
                "across reshapes); use prune_transformer (layers, heads, FFN neurons) or prune (one level)")
    if step_type == "prune_transformer" and kind in ("torchvision", "timm"):
        return (f"step 'prune_transformer' cuts attention layers, and a {kind} model is pruned by its channels: "
                "use prune_structured or prune (one level)")
    return None


__all__ = ["DataRef", "ModelRef", "ModelRefError", "NEEDS_TRAINING", "REF_VERSION", "USER_KINDS", "parse_model_ref",
           "unsupported_reason"]

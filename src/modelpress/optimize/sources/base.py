"""The one interface every model source implements, and what loading gives back.

A source turns a ``ModelRef`` whose paths are local files into a ``LoadedModel``: the float model in
eval mode and a ``ModelSpec`` (``optimize.spec``) whose ``build`` re-creates the same architecture
without weights (``artifacts.load_artifact`` rebuilds from it) and whose ``data`` reads the ref's data
files. ``check`` runs cheap checks first (files exist, no ``auto_map``...), ``supports`` says why a step
cannot run on this kind (torch-free, from ``ref.unsupported_reason``).

Example:
    >>> from modelpress.optimize.sources import get_source  # doctest: +SKIP
    >>> loaded = get_source("hf").load(ref)  # doctest: +SKIP
    >>> loaded.spec.metric  # doctest: +SKIP
    'accuracy'
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path


from torch import nn

from modelpress.optimize.sources.ref import ModelRef, unsupported_reason
from modelpress.optimize.spec import ModelSpec
from modelpress.store import file_sha256

# Bumped when a source's loading code changes what a model computes: part of the content id, so results
# made by older code are not reused (issue 10 item 6).
SOURCE_VERSIONS: dict[str, int] = {"registered": 1, "hf": 1, "torchvision": 1, "timm": 1, "export": 1}


@dataclass
class LoadedModel:
    """A float model in eval mode and the spec the pipeline measures it with."""

    model: nn.Module
    spec: ModelSpec


class ModelSource:
    """Base of every source: ``check`` → ``load``; ``supports`` for steps; ``content_id`` for reuse."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def check(self, ref: ModelRef) -> list[str]:
        """Cheap problems with ``ref`` (missing files...), each a sentence; empty when it looks loadable."""
        problems = []
        for label, p in self.files(ref):
            if not Path(p).exists():
                problems.append(f"{label} {p} does not exist")
        return problems

    def files(self, ref: ModelRef) -> list[tuple[str, str]]:
        """(label, local path) of every file or folder the model and its data come from."""
        out: list[tuple[str, str]] = []
        if ref.path:
            out.append(("model path", ref.path))
        if ref.weights:
            out.append(("weights file", ref.weights))
        if ref.data is not None:
            out.append(("eval data", ref.data.eval))
            if ref.data.calibration:
                out.append(("calibration data", ref.data.calibration))
            if ref.data.train:
                out.append(("train data", ref.data.train))
        return out

    def supports(self, step_type: str, *, has_train: bool = False) -> str | None:
        """Why ``step_type`` cannot run on this source (``has_train``: the ref has ``data.train``), or None.

        Example:
            >>> ModelSource("hf").supports("qat", has_train=True) is None
            True
        """
        return unsupported_reason(self.kind, step_type, has_train=has_train)

    def load(self, ref: ModelRef) -> LoadedModel:
        raise NotImplementedError

    def content_id(self, ref: ModelRef) -> str:
        """sha256 over the model's files, weights, data (eval, calibration, train), kind, name and source version.

        ``ref.content_sha256`` (set at staging) is used as is when present; otherwise it is computed from
        the local files, in the same way.
        """
        if ref.content_sha256:
            return ref.content_sha256
        h = hashlib.sha256(f"{ref.kind}\n{ref.name}\nv{SOURCE_VERSIONS.get(ref.kind, 0)}\n".encode())
        for label, p in self.files(ref):
            for rel, full in _walk(Path(p)):
                h.update(f"{label}:{rel}:{file_sha256(full)}\n".encode())
        opts = ref.model_dump(mode="json", include={"preprocess", "metric", "max_length"})
        h.update(repr(sorted(opts.items())).encode())
        return h.hexdigest()


def _walk(p: Path) -> list[tuple[str, Path]]:
    if p.is_file():
        return [("", p)]
    out = []
    for root, dirs, names in os.walk(p):
        dirs.sort()
        for n in sorted(names):
            full = Path(root) / n
            out.append((str(full.relative_to(p)), full))
    return out


def check_problems(source: ModelSource, ref: ModelRef) -> None:
    """Raise a ``ModelLoadError`` listing every problem ``source.check`` finds."""
    from modelpress.errors import ModelLoadError

    problems = source.check(ref)
    if problems:
        raise ModelLoadError(f"model {ref.display_name}: " + "; ".join(problems))


__all__ = ["LoadedModel", "ModelSource", "SOURCE_VERSIONS", "check_problems"]



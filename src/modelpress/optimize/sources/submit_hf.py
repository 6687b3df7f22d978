"""The ``hf:`` source's submit check, without torch or transformers: the folder, its weights, its data.

What lives here: ``submit_check`` for a model folder written by ``save_pretrained``. The folder's own
rules (config entries that run or fetch code, shard indexes naming files elsewhere, tokenizer code) are
``hf_files.check_folder``, which the worker runs again before transformers opens the folder; this adds
what only submit checks: each ``.safetensors`` shard's structure, the folder's total size, and the data's
labels against the config's classes (``id2label``/``num_labels`` of a ``...ForSequenceClassification``).

``sources.submit.check_ref`` dispatches here for ``hf`` refs.

Example:
    >>> from modelpress.optimize.sources import parse_model_ref
    >>> ref = parse_model_ref("hf:/nope", data={"eval": "/nope.jsonl"})
    >>> [loc for loc, _ in submit_check(ref, max_bytes=1 << 30)]
    [('model',), ('data', 'eval')]
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from modelpress.errors import ModelLoadError
from modelpress.optimize.sources.hf_files import check_folder
from modelpress.optimize.sources.hf_tasks import hf_task
from modelpress.optimize.sources.submit_data import data_problems
from modelpress.optimize.sources.weights_file import check_weights_file

if TYPE_CHECKING:
    from modelpress.optimize.sources.data_checks import Problem
    from modelpress.optimize.sources.ref import ModelRef


def submit_check(ref: "ModelRef", *, max_bytes: int) -> list[Problem]:
    """Every problem of an ``hf:`` ref's folder and data found without torch, as (field path, message).

    ``max_bytes`` bounds each file and the folder as a whole (``MODELPRESS_MAX_WEIGHTS_BYTES``).

    Example:
        >>> from modelpress.optimize.sources import parse_model_ref
        >>> submit_check(parse_model_ref("hf:/nope", data={"eval": "/e.jsonl"}), max_bytes=1 << 30)[0][1][:30]
        'HF model folder /nope does not'
    """
    problems: list[Problem] = []
    classes, label_names = _check_folder(Path(ref.path or ""), max_bytes, problems)
    return problems + data_problems(ref, max_bytes=max_bytes, classes=classes, label_names=label_names)


def _check_folder(folder: Path, max_bytes: int, problems: list[Problem]) -> tuple[int | None, set[str]]:
    """Appends the folder's problems; returns its classifier's class count and label names when it has one."""
    where = ("model",)
    found = check_folder(folder)
    problems += [(where, m) for m in found.problems]
    config = found.config
    if config is None:
        return None, set()
    for shard in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".safetensors"):
        try:
            check_weights_file(shard, max_bytes=max_bytes)
        except ModelLoadError as e:
            problems.append((where, str(e)))
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    if total > max_bytes:
        problems.append((where, f"HF model folder {folder} holds {total} bytes, over the limit of {max_bytes} "
                                "bytes (MODELPRESS_MAX_WEIGHTS_BYTES)"))
    id2label = config.get("id2label")
    names = {str(v) for v in id2label.values()} if isinstance(id2label, dict) else set()
    classes = len(id2label) if isinstance(id2label, dict) and id2label else config.get("num_labels")
    if hf_task(config) != "sequence-classification":
        return None, set()  # a base encoder: no class count to check labels against
    return (classes if isinstance(classes, int) and classes > 0 else None), names


__all__ = ["submit_check"]

"""The ``hf:`` source's submit check, without torch or transformers: the folder, its weights, its data.

What lives here: ``submit_check`` for a model folder written by ``save_pretrained``. The folder's own
rules (config entries that run or fetch code, shard indexes naming files elsewhere, tokenizer code) are
``hf_files.check_folder``, which the worker runs again before transformers opens the folder; this adds
what only submit checks: each ``.safetensors`` shard's structure, the folder's total size, and the data's
labels against the config's classes (``id2label``/``num_labels`` of a ``...ForSequenceClassification``, or
each word's tag for a ``...ForTokenClassification``, whose rows are words: ``token_rows``).

``sources.submit.check_ref`` dispatches here for ``hf`` refs.

Example:
    >>> from modelpress.optimize.sources import parse_model_ref
    >>> ref = parse_model_ref("hf:/nope", data={"eval": "/nope.jsonl"})
    >>> [loc for loc, _ in submit_check(ref, max_bytes=1 << 30)]
    [('model',), ('data', 'eval')]
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelpress.errors import DataError, ModelLoadError
from modelpress.optimize.sources.hf_files import check_folder
from modelpress.optimize.sources.hf_images import class_ids, read_preprocess
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
    config: dict = {}
    classes, label_names, task = _check_folder(Path(ref.path or ""), max_bytes, problems, config)
    rows = {"token-classification": "tokens", "image-classification": "images",
            "question-answering": "qa", "causal-lm": "lm-text"}.get(task or "", "text")
    also = (lambda p: _class_folder_problems(p, config.get("id2label"))) if rows == "images" else None
    if task == "causal-lm" and ref.data is not None and ref.data.train:
        problems.append((("data", "train"), "training a causal LM is not offered yet; its recipes (int8-weight-only, "
                                            "int4-weight-only) need eval and optionally calibration text only"))
    return problems + data_problems(ref, max_bytes=max_bytes, classes=classes, label_names=label_names,
                                    hf_rows=rows, also=also)


def _class_folder_problems(folder: Path, id2label: Any) -> list[str]:
    """An image classifier's class subfolders must name its classes (``hf_images.class_ids``)."""
    if not folder.is_dir():
        return []
    names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    try:
        class_ids(names, id2label if isinstance(id2label, dict) else None)
    except DataError as e:
        return [f"data folder {folder}: {e}"]
    return []


def _check_folder(folder: Path, max_bytes: int, problems: list[Problem], config_out: dict
                  ) -> tuple[int | None, set[str], str | None]:
    """Appends the folder's problems and fills ``config_out`` with its config; returns its classifier's class
    count and label names when it has one, and its task (``hf_tasks``) when its config could be read."""
    where = ("model",)
    found = check_folder(folder)
    problems += [(where, m) for m in found.problems]
    config = found.config
    if config is None:
        return None, set(), None
    config_out.update(config)
    if hf_task(config) == "image-classification":
        try:
            read_preprocess(folder)
        except DataError as e:
            problems.append((where, str(e)))
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
    task = hf_task(config)
    if task not in ("sequence-classification", "token-classification", "image-classification"):
        return None, set(), task  # a base encoder: no class count to check labels against
    return (classes if isinstance(classes, int) and classes > 0 else None), names, task


__all__ = ["submit_check"]

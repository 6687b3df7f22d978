"""A user's data files checked at submit, without torch: the part of every source's submit check that reads data.

What lives here: ``check_data_file`` (one file or image folder, for a model of a given kind: missing,
over the size limit, empty, an unsupported format, unreadable headers, JSONL labels outside the model's
classes, tensor ``labels`` that are not 1-D integers, an image folder with more classes than the
classifier) and ``data_problems`` (each of a ref's data files, eval, calibration and train, each problem
at its field; a train image folder's classes must be the eval folder's). The per-source checks (``submit_hf``, ``submit_vision``,
``submit_export``, ``submit_registered``) call ``data_problems`` with what they learnt from the model's
own files: its class count, its label names, or a further check of their own.

Decoded sizes (pixels, rows, tokens) are ``data_checks``' work, shared with the worker's readers.

Example:
    >>> from modelpress.optimize.sources import parse_model_ref
    >>> data_problems(parse_model_ref("export:m.pt2", data={"eval": "/nope.npz"}), max_bytes=1 << 30)
    [(('data', 'eval'), 'data file /nope.npz does not exist')]
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

from modelpress.errors import ModelLoadError
from modelpress.optimize.sources.data_checks import (
    image_folder_limit_problems,
    jsonl_problems,
    lm_text_problems,
    tensor_label_problems,
    tensor_limit_problems,
)
from modelpress.optimize.sources.qa_rows import qa_jsonl_problems
from modelpress.optimize.sources.token_rows import token_jsonl_problems
from modelpress.optimize.sources.weights_file import check_safetensors, file_size_problem, safetensors_header
from modelpress.store import list_tree

if TYPE_CHECKING:
    from modelpress.optimize.sources.data_checks import Problem
    from modelpress.optimize.sources.ref import ModelRef

# What an image folder may hold at submit (the worker's reader takes ``data_checks.IMAGE_SUFFIXES``).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
# JSONL files up to this size are read whole at submit to check labels; larger ones only by the worker.
JSONL_CHECK_BYTES = 64 * 1024 * 1024


def data_problems(ref: "ModelRef", *, max_bytes: int, classes: int | None = None,
                  label_names: set[str] | frozenset[str] = frozenset(),
                  also: Callable[[Path], list[str]] | None = None,
                  hf_rows: Literal["text", "tokens", "qa", "images", "lm-text"] = "text") -> list[Problem]:
    """Every problem of the ref's eval, calibration and train files, as ((``"data"``, role), message).

    Each is checked the same way: the train file is in the eval file's format, its labels optional and, when
    given, valid like the eval file's.

    ``classes`` and ``label_names`` come from the model's files (a classifier's output count, an HF
    config's ``id2label``); ``also`` is the source's own check of a file that passed these (an exported
    program's input names), run only then so that one file gets one reason. ``hf_rows`` is what an ``hf:`` folder's
    model reads: JSONL rows with a ``text`` (and ``label``), a token classifier's JSONL ``tokens`` (and
    ``labels``, ``token_rows``), a question-answering model's JSONL ``question``/``context``/``answer``
    (``qa_rows``), or an image classifier's image folder.

    Example:
        >>> from modelpress.optimize.sources import parse_model_ref
        >>> ref = parse_model_ref("hf:m", data={"eval": "/nope.jsonl", "calibration": "/nope/c.jsonl"})
        >>> [loc for loc, _ in data_problems(ref, max_bytes=1 << 30)]
        [('data', 'eval'), ('data', 'calibration')]
    """
    problems: list[Problem] = []
    if ref.data is None:
        return problems
    for role in ("eval", "calibration", "train"):
        path = getattr(ref.data, role)
        if path is None:
            continue
        found = check_data_file(Path(path), kind=ref.kind, classes=classes, label_names=label_names,
                                max_bytes=max_bytes, hf_rows=hf_rows)
        if not found and also is not None:
            found = also(Path(path))
        if not found and role == "train":
            found = train_class_problems(Path(path), Path(ref.data.eval))
        problems += [(("data", role), m) for m in found]
    return problems


def train_class_problems(train: Path, eval_data: Path) -> list[str]:
    """A train image folder's class subfolders that the eval folder does not have (labels come from the eval
    folder's sorted subfolder names, ``data.align_class_labels``); ``[]`` unless both are labelled folders.

    Example:
        >>> train_class_problems(Path("/nope/train"), Path("/nope/eval"))
        []
    """
    if not (train.is_dir() and eval_data.is_dir()):
        return []
    eval_classes = _class_folders(eval_data)
    unknown = [c for c in _class_folders(train) if c not in eval_classes]
    if not eval_classes or not unknown:
        return []
    return [f"data folder {train}: class subfolder(s) {', '.join(unknown[:5])} are not among the eval folder's "
            f"classes ({', '.join(eval_classes[:20])}); class indices come from the eval folder's subfolder names"]


def _class_folders(folder: Path) -> list[str]:
    # As the worker lists them (data_checks.image_files): sorted subfolders, dot-names skipped.
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def check_data_file(path: Path, *, kind: str, classes: int | None = None,
                    label_names: set[str] | frozenset[str] = frozenset(), max_bytes: int,
                    hf_rows: Literal["text", "tokens", "qa", "images", "lm-text"] = "text") -> list[str]:
    """What is wrong with one data file (or image folder) for a model of ``kind``; empty when fine.

    Example:
        >>> check_data_file(Path("/nope.csv"), kind="hf", max_bytes=1 << 30)
        ['data file /nope.csv does not exist']
    """
    if path.is_dir():
        return _check_image_folder(path, kind="hf-images" if kind == "hf" and hf_rows == "images" else kind,
                                   classes=classes, max_bytes=max_bytes)
    if kind == "hf" and hf_rows == "images":
        return [f"data {path.name}: an image classifier's data is a folder of images (class subfolders named by "
                "the config's id2label, or images only)"]
    if refused := file_size_problem(path, what="data file", max_bytes=max_bytes):
        return [refused]
    if path.stat().st_size == 0:
        return [f"data file {path.name} is empty"]
    suffix = path.suffix.lower()
    # Shapes in the headers first: a header declaring a huge shape is refused by the limit it breaks.
    if suffix in (".safetensors", ".npz") and (over := tensor_limit_problems(path) or tensor_label_problems(path)):
        return over
    if suffix == ".jsonl":
        if kind != "hf":
            return [f"data file {path.name}: JSONL text data needs a model with a tokenizer (hf:...); give a "
                    f"{kind} model tensors (.safetensors/.npz) or an image folder"]
        # Rows are counted at any size; labels are read only up to JSONL_CHECK_BYTES.
        if hf_rows == "tokens":
            return token_jsonl_problems(path, classes=classes, label_names=label_names, read_limit=JSONL_CHECK_BYTES)
        if hf_rows == "qa":
            return qa_jsonl_problems(path, read_limit=JSONL_CHECK_BYTES)
        if hf_rows == "lm-text":
            return lm_text_problems(path, read_limit=JSONL_CHECK_BYTES)
        return jsonl_problems(path, classes=classes, label_names=label_names, read_limit=JSONL_CHECK_BYTES)
    if suffix == ".safetensors":
        tensors = [k for k in safetensors_header(path) if k != "__metadata__"]
        if not tensors:
            return [f"data file {path.name} is not a readable safetensors file (bad header), or holds no tensors"]
        try:
            check_safetensors(path)
        except ModelLoadError as e:
            return [str(e).replace("weights file", "data file")]
        return []
    if suffix == ".npz":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                unpacked = sum(i.file_size for i in zf.infolist())
        except (zipfile.BadZipFile, OSError) as e:
            return [f"data file {path.name} is not a readable .npz archive ({e})"]
        if unpacked > max_bytes:
            return [f"data file {path.name} unpacks to {unpacked} bytes, over the limit of {max_bytes} bytes"]
        if not names or not all(n.endswith(".npy") for n in names):
            return [f"data file {path.name} is not a numpy .npz archive (expected only .npy members)"]
        return []
    return [f"data file {path.name}: unsupported format {suffix or '(no suffix)'}; use .jsonl (text), .safetensors "
            "or .npz (tensors by forward argument name, optional 'labels'), or a folder of images"]


def _check_image_folder(folder: Path, *, kind: str, classes: int | None, max_bytes: int) -> list[str]:
    if kind not in ("torchvision", "timm", "registered", "export", "hf-images"):
        return [f"data folder {folder}: a folder of images is data for an image model (torchvision:/timm:, or an "
                f"hf: *ForImageClassification), not for a {kind} model"]
    files = list_tree(folder)
    images = [f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        return [f"data folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})"]
    if sum((folder / f).stat().st_size for f in files) > max_bytes:
        return [f"data folder {folder} holds more than {max_bytes} bytes (MODELPRESS_MAX_WEIGHTS_BYTES)"]
    subdirs = sorted({f.split("/", 1)[0] for f in images if "/" in f})
    flat = [f for f in images if "/" not in f]
    if subdirs and flat:
        return [f"data folder {folder} mixes images at the top ({flat[0]}, ...) with class subfolders; use one "
                "layout: class subfolders (labelled) or images only (unlabelled)"]
    if subdirs and classes is not None and len(subdirs) > classes:
        return [f"data folder {folder} has {len(subdirs)} class subfolders but the weights' classifier has "
                f"{classes} outputs"]
    return image_folder_limit_problems(folder)  # image count, then each header: pixels and aspect ratio


__all__ = ["IMAGE_SUFFIXES", "JSONL_CHECK_BYTES", "check_data_file", "data_problems", "train_class_problems"]

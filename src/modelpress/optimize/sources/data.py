"""Readers for a user's data: tensor files, JSONL text, image folders; and the eval/calibration split.

Every reader is bounded (file size, row count, image pixels) and raises ``DataError`` with a message
that names the problem: an input name that is not one of the forward's arguments, a label outside the
class count, a file over the limit. Nothing here unpickles: ``.npz`` is read with ``allow_pickle=False``,
``.safetensors`` holds only tensors.

Calibration without a calibration file: a seeded (seed 0) random quarter of the eval rows, at most
256, is set aside for calibration *and* validation (every choice: calibration scales, fallback layers);
the reported metric uses only the remaining rows (``split_for_calibration``). With a calibration file,
calibration and validation use that file and every eval row is reported.

Example:
    >>> keep, held = split_for_calibration(100)
    >>> len(keep), len(held), set(keep) & set(held)
    (75, 25, set())
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from modelpress.optimize.errors import DataError
from modelpress.optimize.zoo import TaskData

MAX_TENSOR_FILE_BYTES = 2 * 1024**3
MAX_TEXT_FILE_BYTES = 256 * 1024**2
MAX_ROWS = 200_000
MAX_IMAGES = 100_000
MAX_IMAGE_BYTES = 64 * 1024**2
MAX_IMAGE_PIXELS = 64_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".gif")
SPLIT_SEED = 0
SPLIT_FRACTION = 0.25
SPLIT_MAX = 256


def _check_size(p: Path, limit: int, what: str) -> None:
    if not p.is_file():
        raise DataError(f"{what} {p} does not exist or is not a file")
    size = p.stat().st_size
    if size > limit:
        raise DataError(f"{what} {p.name} is {size} bytes, over the limit of {limit} bytes")


# ----------------------------------------------------------------------------- the split
def split_for_calibration(n: int, *, seed: int = SPLIT_SEED) -> tuple[list[int], list[int]]:
    """Row indices (reported, set aside) when no calibration file is given: disjoint, seeded, documented."""
    if n < 2:
        raise DataError(f"the eval data has {n} row(s); give at least 2 (or a separate calibration file)")
    k = max(1, min(SPLIT_MAX, math.floor(n * SPLIT_FRACTION)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held = sorted(perm[:k])
    keep = sorted(perm[k:])
    return keep, held


def _take(x: tuple[torch.Tensor, ...], idx: Sequence[int]) -> tuple[torch.Tensor, ...]:
    i = torch.tensor(list(idx), dtype=torch.long)
    return tuple(t.index_select(0, i) for t in x)


def _one(x: tuple[torch.Tensor, ...]) -> Any:
    return x[0] if len(x) == 1 else x


def make_task_data(eval_inputs: tuple[torch.Tensor, ...], eval_labels: torch.Tensor | None,
                   calib: tuple[tuple[torch.Tensor, ...], torch.Tensor | None] | None, *, what: str) -> TaskData:
    """Build ``TaskData`` from eval rows and optional calibration rows (else split eval, seeded).

    Example:
        >>> td = make_task_data((torch.zeros(8, 3),), None, None, what="x.npz")
        >>> td.eval_inputs.shape[0], td.calib_inputs.shape[0]
        (6, 2)
    """
    n = int(eval_inputs[0].shape[0])
    if calib is not None:
        cx, cy = calib
        desc = (f"{what}: {n} eval rows, all reported; calibration and validation: "
                f"{int(cx[0].shape[0])} rows of the calibration file")
        return TaskData(eval_inputs=_one(eval_inputs), eval_labels=eval_labels, calib_inputs=_one(cx),
                        val_inputs=_one(cx), val_labels=cy, description=desc)
    keep, held = split_for_calibration(n)
    ex, cx = _take(eval_inputs, keep), _take(eval_inputs, held)
    ey = eval_labels[keep] if eval_labels is not None else None
    cy = eval_labels[held] if eval_labels is not None else None
    desc = (f"{what}: no calibration file, so {len(held)} of {n} eval rows (seeded random, seed {SPLIT_SEED}) are "
            f"set aside for calibration and validation; the metric is reported on the other {len(keep)} rows")
    return TaskData(eval_inputs=_one(ex), eval_labels=ey, calib_inputs=_one(cx), val_inputs=_one(cx),
                    val_labels=cy, description=desc)


# ----------------------------------------------------------------------------- tensors
def read_tensors(path: str | Path, names: Sequence[str], *, required: Sequence[str] | None = None,
                 max_bytes: int = MAX_TENSOR_FILE_BYTES) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    """Read ``.safetensors``/``.npz`` tensors keyed by forward argument name, plus optional ``labels``.

    Returns the inputs in the order of ``names`` (optional arguments absent from the file are left out
    from the end) and the labels (or None).

    Example:
        >>> import tempfile, numpy as np, os
        >>> f = os.path.join(tempfile.mkdtemp(), "d.npz")
        >>> np.savez(f, x=np.zeros((4, 3), np.float32), labels=np.arange(4))
        >>> xs, y = read_tensors(f, ["x"])
        >>> tuple(xs[0].shape), y.tolist()
        ((4, 3), [0, 1, 2, 3])
    """
    p = Path(path)
    _check_size(p, max_bytes, "data file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            d = dict(load_file(str(p), device="cpu"))
        elif suffix == ".npz":
            import numpy as np

            with np.load(p, allow_pickle=False) as z:
                d = {k: torch.from_numpy(np.ascontiguousarray(z[k])) for k in z.files}
        else:
            raise DataError(f"data file {p.name}: tensors must be .safetensors or .npz (got {suffix or 'no suffix'})")
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - every reader error means "not a usable data file"
        raise DataError(f"data file {p.name} could not be read ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:200]})") from None
    labels = d.pop("labels", None)
    unknown = sorted(set(d) - set(names))
    required = list(names) if required is None else list(required)
    missing = [n for n in required if n not in d]
    if unknown or missing:
        raise DataError(f"data file {p.name} holds tensors {sorted(d)}, but the model's forward takes "
                        f"{list(names)} (required: {required})"
                        + (f"; not arguments: {unknown}" if unknown else "")
                        + (f"; missing: {missing}" if missing else "")
                        + "; name each tensor after a forward argument, and the targets 'labels'")
    ordered: list[torch.Tensor] = []
    for n in names:
        if n not in d:
            break  # an optional argument left out: the rest must be left out too (positional call)
        ordered.append(d[n])
    leftover = [n for n in names[len(ordered):] if n in d]
    if leftover:
        raise DataError(f"data file {p.name}: {leftover} given but an earlier forward argument "
                        f"({names[len(ordered)]}) is not; inputs are passed positionally")
    rows = {int(t.shape[0]) if t.ndim else -1 for t in ordered + ([labels] if labels is not None else [])}
    if len(rows) != 1 or -1 in rows:
        raise DataError(f"data file {p.name}: every tensor needs the same number of rows (first dimension); "
                        f"got {[tuple(t.shape) for t in ordered]}" + (f", labels {tuple(labels.shape)}" if labels is not None else ""))
    if rows.pop() > MAX_ROWS:
        raise DataError(f"data file {p.name} has more than {MAX_ROWS} rows")
    if labels is not None:
        labels = _int_labels(labels, p.name)
    return tuple(ordered), labels


def _int_labels(labels: torch.Tensor, where: str) -> torch.Tensor:
    if labels.ndim != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise DataError(f"{where}: 'labels' must be a 1-D integer tensor of class indices "
                        f"(got {labels.dtype}, shape {tuple(labels.shape)})")
    return labels.to(torch.long)


def check_labels(labels: torch.Tensor | None, num_classes: int, where: str) -> None:
    """Refuse labels outside ``[0, num_classes)`` with the offending value and row.

    Example:
        >>> check_labels(torch.tensor([0, 2]), 3, "d.npz")  # within range: no error
    """
    if labels is None or labels.numel() == 0:
        return
    bad = ((labels < 0) | (labels >= num_classes)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{where}: label {int(labels[i])} in row {i + 1} is outside the model's "
                        f"{num_classes} classes (0..{num_classes - 1})")


# ----------------------------------------------------------------------------- JSONL text
def read_jsonl(path: str | Path, *, max_bytes: int = MAX_TEXT_FILE_BYTES
               ) -> tuple[list[str], list[str] | None, list[Any] | None]:
    """Rows ``{"text": ..., "text_pair"?: ..., "label"?: index or name}`` → (texts, pairs, labels).

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "d.jsonl")
        >>> _ = open(f, "w").write('{"text": "a", "label": 1}\\n{"text": "b", "label": 0}\\n')
        >>> read_jsonl(f)
        (['a', 'b'], None, [1, 0])
    """
    p = Path(path)
    _check_size(p, max_bytes, "data file")
    texts: list[str] = []
    pairs: list[str] = []
    labels: list[Any] = []
    with open(p, encoding="utf-8", errors="strict") as f:
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if len(texts) >= MAX_ROWS:
                    raise DataError(f"{p.name}: more than {MAX_ROWS} rows")
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{p.name} line {lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise DataError(f"{p.name} line {lineno}: each row must be an object with a string 'text'")
                extra = set(row) - {"text", "text_pair", "label"}
                if extra:
                    raise DataError(f"{p.name} line {lineno}: unknown field(s) {sorted(extra)}; "
                                    "allowed: text, text_pair, label")
                texts.append(row["text"])
                if "text_pair" in row:
                    if not isinstance(row["text_pair"], str):
                        raise DataError(f"{p.name} line {lineno}: 'text_pair' must be a string")
                    pairs.append(row["text_pair"])
                if "label" in row:
                    if not isinstance(row["label"], (int, str)) or isinstance(row["label"], bool):
                        raise DataError(f"{p.name} line {lineno}: 'label' must be a class index or a label name")
                    labels.append(row["label"])
        except UnicodeDecodeError as e:
            raise DataError(f"{p.name}: not UTF-8 text ({e.reason})") from None
    if not texts:
        raise DataError(f"{p.name}: no rows")
    for what, col in (("text_pair", pairs), ("label", labels)):
        if col and len(col) != len(texts):
            raise DataError(f"{p.name}: '{what}' is on {len(col)} of {len(texts)} rows; give it on every row or none")
    return texts, pairs or None, labels or None


def label_indices(labels: list[Any], *, num_classes: int, label2id: dict[str, int] | None, where: str) -> torch.Tensor:
    """Map JSONL labels (indices or names from the model's ``id2label``) to indices, range-checked.

    Example:
        >>> label_indices(["neg", 1], num_classes=2, label2id={"neg": 0, "pos": 1}, where="e.jsonl").tolist()
        [0, 1]
    """
    out = []
    names = label2id or {}
    for i, v in enumerate(labels):
        if isinstance(v, str):
            if v not in names:
                raise DataError(f"{where}: label {v!r} in row {i + 1} is not one of the model's labels "
                                f"{sorted(names)[:20]}")
            v = names[v]
        out.append(int(v))
    t = torch.tensor(out, dtype=torch.long)
    check_labels(t, num_classes, where)
    return t


# ----------------------------------------------------------------------------- images
def image_files(root: str | Path) -> tuple[list[tuple[Path, int | None]], list[str]]:
    """Images under ``root``: class subfolders (sorted names → indices) or a flat folder (no labels)."""
    r = Path(root)
    if not r.is_dir():
        raise DataError(f"image folder {r} does not exist or is not a folder")
    subdirs = sorted(d for d in r.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[tuple[Path, int | None]] = []
    if subdirs:
        for idx, d in enumerate(subdirs):
            files += [(f, idx) for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        classes = [d.name for d in subdirs]
    else:
        files = [(f, None) for f in sorted(r.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        classes = []
    if not files:
        raise DataError(f"image folder {r.name} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if len(files) > MAX_IMAGES:
        raise DataError(f"image folder {r.name} holds {len(files)} images, over the limit of {MAX_IMAGES}")
    return files, classes


def preprocess_image(img: Any, pre: dict[str, Any]) -> torch.Tensor:
    """PIL image → normalized CHW float tensor: resize shorter side, center crop, scale, mean/std."""
    from PIL import Image

    img = img.convert("RGB")
    resize, crop = int(pre["resize"]), int(pre["crop"])
    w, h = img.size
    s = resize / min(w, h)
    img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - crop) // 2, (h - crop) // 2
    img = img.crop((left, top, left + crop, top + crop))
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(crop, crop, 3)
    x = x.permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(pre["mean"], dtype=torch.float32).reshape(3, 1, 1)
    std = torch.tensor(pre["std"], dtype=torch.float32).reshape(3, 1, 1)
    return (x - mean) / std


def read_images(root: str | Path, pre: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """Read and preprocess an image folder; returns (images N×3×crop×crop, labels or None, class names)."""
    from PIL import Image

    files, classes = image_files(root)
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # decompression bombs raise instead of filling memory
    xs, ys = [], []
    for f, y in files:
        _check_size(f, MAX_IMAGE_BYTES, "image")
        try:
            with Image.open(f) as img:
                xs.append(preprocess_image(img, pre))
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken image names itself
            raise DataError(f"image {f.name} could not be read ({type(e).__name__}: {str(e)[:200]})") from None
        ys.append(y)
    labels = torch.tensor(ys, dtype=torch.long) if classes else None
    return torch.stack(xs), labels, classes


__all__ = ["check_labels", "image_files", "label_indices", "make_task_data", "preprocess_image", "read_images",
           "read_jsonl", "read_tensors", "split_for_calibration"]

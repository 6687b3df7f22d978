"""Readers for a user's data: tensor files, JSONL text, image folders; and the eval/calibration split.

Every reader is bounded (file size, row count, and what the data decodes to: ``optimize.limits``, checked
from headers and counts before anything is decoded) and raises ``DataError`` with a message
that names the problem: an input name that is not one of the forward's arguments, a label outside the
class count, a file over the limit. Nothing here unpickles: ``.npz`` is read with ``allow_pickle=False``,
``.safetensors`` holds only tensors.

Three kinds of rows, never the same rows (``split_rows``): **eval** rows give the reported metric;
**validation** rows make every choice (SmoothQuant strength, layers kept float, weight granularity, the
runtime); **calibration** rows set the int8 scales. A seeded (seed 0) random fifth of the eval file, at most
256 rows, becomes the validation rows; without a calibration file another such fifth becomes the
calibration rows. With a calibration file, calibration uses that file only. So the reported metric is
measured on rows that neither calibrated nor chose anything. Data too small to split is refused with
the numbers needed.

A **train** file (optional, in the eval file's format) is what training steps learn from. Its rows that
also appear in the eval file, by content (``TrainRows``, ``drop_eval_rows``), are dropped and counted in
the description: a model trained on a row it is then measured on would report a metric it memorised.

Example:
    >>> s = split_rows(100, calibration_file=False)
    >>> len(s.eval), len(s.validation), len(s.calibration)
    (60, 20, 20)
    >>> set(s.eval) & set(s.validation), set(s.validation) & set(s.calibration)
    (set(), set())
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Sequence

import torch

from modelpress.errors import DataError
from modelpress.optimize.limits import (
    DecodedLimits,
    check_image_data,
    check_image_size,
    check_preprocess_sides,
    current_limits,
    pillow_guard,
)
from modelpress.optimize.sources.data_checks import MAX_ROWS, MAX_TEXT_FILE_BYTES, check_tensor_file, image_files
from modelpress.optimize.spec import TaskData

MAX_TENSOR_FILE_BYTES = 2 * 1024**3
MAX_IMAGE_BYTES = 64 * 1024**2
SPLIT_SEED = 0
SPLIT_FRACTION = 0.2  # of the eval file, for validation; and, without a calibration file, for calibration
SPLIT_MAX = 256
SPLIT_MIN = 2  # rows each part needs at least: one row gives no spread to judge a choice by


def _check_size(p: Path, limit: int, what: str) -> None:
    if not p.is_file():
        raise DataError(f"{what} {p} does not exist or is not a file")
    size = p.stat().st_size
    if size > limit:
        raise DataError(f"{what} {p.name} is {size} bytes, over the limit of {limit} bytes")


# ----------------------------------------------------------------------------- the split
@dataclass(frozen=True)
class RowSplit:
    """Row indices of the eval file by use; ``calibration`` is empty when a calibration file is given."""

    eval: list[int]
    validation: list[int]
    calibration: list[int]
    seed: int

    def describe(self, what: str, *, calibration_rows: int | None = None) -> str:
        n = len(self.eval) + len(self.validation) + len(self.calibration)
        calib = (f"{calibration_rows} rows of the calibration file" if calibration_rows is not None else
                 f"another {len(self.calibration)} of them")
        return (f"{what}: {n} rows; {len(self.validation)} (seeded random, seed {self.seed}) are validation rows for "
                f"choices, calibration: {calib}; the metric is reported on the other {len(self.eval)} rows, which "
                "neither calibrated nor chose anything")


def split_rows(n: int, *, calibration_file: bool, seed: int = SPLIT_SEED) -> RowSplit:
    """Split ``n`` eval-file rows into disjoint eval, validation and (without a calibration file)
    calibration rows: seeded, documented, refused with the numbers when too small.

    Example:
        >>> split_rows(10, calibration_file=True).validation
        [1, 4]
    """
    parts = 2 if calibration_file else 3
    need = SPLIT_MIN * parts
    if n < need:
        raise DataError(
            f"the eval data has {n} row(s), too few to keep reported rows apart from the rows that choose and "
            f"calibrate: give at least {need} rows ({SPLIT_MIN} reported, {SPLIT_MIN} for validation"
            + (")" if calibration_file else f", {SPLIT_MIN} for calibration), or a separate calibration file"))
    k = max(SPLIT_MIN, min(SPLIT_MAX, math.floor(n * SPLIT_FRACTION)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    val = perm[:k]
    cal = [] if calibration_file else perm[k:2 * k]
    rest = perm[k + len(cal):]
    return RowSplit(eval=sorted(rest), validation=sorted(val), calibration=sorted(cal), seed=seed)


def _take(x: tuple[torch.Tensor, ...], idx: Sequence[int]) -> tuple[torch.Tensor, ...]:
    i = torch.tensor(list(idx), dtype=torch.long)
    return tuple(t.index_select(0, i) for t in x)


def _one(x: tuple[torch.Tensor, ...]) -> Any:
    return x[0] if len(x) == 1 else x


@dataclass(frozen=True)
class TrainRows:
    """A train file's rows, read like the eval file's: inputs, labels (or None), and what each row is.

    ``keys`` are the rows' contents as read from the file (a text row's ``(text, text_pair)``); None keys
    each row by its tensor values (``row_keys``), which is what an image (decoded pixels) or a tensor row is.

    Example:
        >>> TrainRows((torch.zeros(3, 2),), None, "train.npz").name
        'train.npz'
    """

    inputs: tuple[torch.Tensor, ...]
    labels: torch.Tensor | None
    name: str
    keys: Sequence[Hashable] | None = None


def row_keys(x: tuple[torch.Tensor, ...], *, chunk: int = 4096) -> list[bytes]:
    """One digest per row of the values in every input tensor (with each tensor's dtype and row shape).

    Two rows get the same key when every input holds the same values; -0.0 and 0.0 count as the same.
    Read in chunks, so the copies made on the way are a few thousand rows, never the whole file.

    Example:
        >>> a = row_keys((torch.tensor([[1.0, 2.0], [0.0, 0.0]]),))
        >>> b = row_keys((torch.tensor([[-0.0, 0.0], [1.0, 2.0]]),))
        >>> a[0] == b[1], a[1] == b[0], a[0] == a[1]
        (True, True, False)
    """
    n = int(x[0].shape[0])
    digests = [hashlib.blake2b(digest_size=16) for _ in range(n)]
    for t in x:
        head = f"{t.dtype}{tuple(t.shape[1:])};".encode()
        for start in range(0, n, chunk):
            part = t[start:start + chunk]
            if part.is_floating_point():
                part = part + 0.0  # -0.0 + 0.0 is 0.0: the same value, the same bytes
            raw = part.reshape(len(part), math.prod(part.shape[1:])).contiguous().view(torch.uint8).numpy()
            for i, row in enumerate(raw, start):
                digests[i].update(head)
                digests[i].update(row.tobytes())
    return [d.digest() for d in digests]


def drop_eval_rows(train: TrainRows, eval_keys: Sequence[Hashable], *, eval_name: str
                   ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None, str]:
    """The train rows that are not in the eval file, their labels, and a sentence saying how many were dropped.

    ``eval_keys`` are the keys of *every* row of the eval file, not only of the rows the split reports: the
    validation rows (and, without a calibration file, the calibration rows) are cut from it too, and they
    choose what is kept, so a row trained on should judge nothing. A separate calibration file is not
    compared: its rows are neither reported nor used for choices. A train file whose every row is an eval
    row is refused: there would be nothing to train on.

    Example:
        >>> tr = TrainRows((torch.tensor([[1.0], [2.0], [3.0]]),), torch.tensor([0, 1, 0]), "t.npz")
        >>> x, y, note = drop_eval_rows(tr, row_keys((torch.tensor([[2.0], [9.0]]),)), eval_name="e.npz")
        >>> x[0].flatten().tolist(), y.tolist(), note
        ([1.0, 3.0], [0, 0], 'train: 2 rows from t.npz, 1 also in the eval file dropped')
    """
    keys = list(train.keys) if train.keys is not None else row_keys(train.inputs)
    in_eval = set(eval_keys)
    keep = [i for i, k in enumerate(keys) if k not in in_eval]
    dropped = len(keys) - len(keep)
    if not keep:
        raise DataError(f"train data {train.name}: all {len(keys)} of its rows are also in the eval data {eval_name}; "
                        "give training rows that are not the rows the metric is measured on")
    x, y = train.inputs, train.labels
    if dropped:
        x = _take(x, keep)
        y = y[keep] if y is not None else None
    note = f"train: {len(keep)} rows from {train.name}, " + (f"{dropped} also in the eval file dropped" if dropped
                                                                else "none also in the eval file")
    return x, y, note


def make_task_data(eval_inputs: tuple[torch.Tensor, ...], eval_labels: torch.Tensor | None,
                   calib: tuple[tuple[torch.Tensor, ...], torch.Tensor | None] | None, *, what: str,
                   train: TrainRows | None = None, eval_keys: Sequence[Hashable] | None = None) -> TaskData:
    """Build ``TaskData`` from the eval file's rows, optional calibration rows (``split_rows``) and optional
    train rows (without the eval file's rows: ``drop_eval_rows``).

    ``eval_keys`` are the eval rows' contents when the reader has them (text rows); else the rows are compared
    by their tensor values.

    Example:
        >>> td = make_task_data((torch.zeros(10, 3),), None, None, what="x.npz")
        >>> [t.shape[0] for t in (td.eval_inputs, td.val_inputs, td.calib_inputs)]
        [6, 2, 2]
        >>> td = make_task_data((torch.zeros(10, 3),), None, None, what="x.npz",
        ...                     train=TrainRows((torch.ones(4, 3),), None, "t.npz"))
        >>> td.train_inputs.shape[0], td.description.endswith("train: 4 rows from t.npz, none also in the eval file")
        (4, True)
    """
    n = int(eval_inputs[0].shape[0])
    split = split_rows(n, calibration_file=calib is not None)

    def labels(idx: list[int]) -> torch.Tensor | None:
        return eval_labels[idx] if eval_labels is not None else None

    if calib is not None:
        cx = calib[0]
        desc = split.describe(what, calibration_rows=int(cx[0].shape[0]))
    else:
        cx = _take(eval_inputs, split.calibration)
        desc = split.describe(what)
    train_x: Any = None
    train_y = None
    if train is not None:
        # Against the whole eval file, before its split: only eval rows are reported, and the file's validation
        # rows choose what is kept, so none of its rows may be trained on (drop_eval_rows).
        tx, train_y, note = drop_eval_rows(train, eval_keys if eval_keys is not None else row_keys(eval_inputs),
                                           eval_name=what)
        train_x = _one(tx)
        desc = f"{desc}; {note}"
    return TaskData(eval_inputs=_one(_take(eval_inputs, split.eval)), eval_labels=labels(split.eval),
                    calib_inputs=_one(cx), val_inputs=_one(_take(eval_inputs, split.validation)),
                    val_labels=labels(split.validation), train_inputs=train_x, train_labels=train_y,
                    description=desc)


def check_train_format(train: tuple[torch.Tensor, ...], eval_inputs: tuple[torch.Tensor, ...], names: Sequence[str],
                       where: str) -> None:
    """Refuse train tensors whose dtype or row shape differs from the eval data's: the train file is in the
    eval file's format, and a model measured on one shape is not trained on another.

    Example:
        >>> check_train_format((torch.zeros(2, 3),), (torch.zeros(5, 3),), ["x"], "t.npz")  # same format
    """
    for name, t, e in zip(names, train, eval_inputs):
        if t.dtype != e.dtype or t.shape[1:] != e.shape[1:]:
            raise DataError(f"{where}: tensor {name!r} is {str(t.dtype).removeprefix('torch.')} with rows of shape "
                            f"{list(t.shape[1:])}, but the eval data's is {str(e.dtype).removeprefix('torch.')} with "
                            f"rows of shape {list(e.shape[1:])}; give train data in the eval data's format")


def align_class_labels(labels: torch.Tensor | None, classes: Sequence[str], eval_classes: Sequence[str],
                       where: str) -> torch.Tensor | None:
    """A labelled image folder's labels as indices of the eval folder's classes (its sorted subfolder names).

    A train folder may lack some of the eval folder's classes, so its own sorted subfolder indices would mean
    other classes; a subfolder that is not an eval class has no index and is refused. Without eval classes
    (a flat eval folder) the folder's own sorted indices stand.

    Example:
        >>> align_class_labels(torch.tensor([0, 1]), ["cat", "fish"], ["cat", "dog", "fish"], "train").tolist()
        [0, 2]
    """
    if labels is None or not eval_classes:
        return labels
    index = {c: i for i, c in enumerate(eval_classes)}
    unknown = [c for c in classes if c not in index]
    if unknown:
        raise DataError(f"{where}: class subfolder(s) {unknown[:5]} are not among the eval folder's classes "
                        f"{list(eval_classes)[:20]}; class indices come from the eval folder's subfolder names")
    remap = torch.tensor([index[c] for c in classes], dtype=torch.long)
    return remap[labels]


# ----------------------------------------------------------------------------- tensors
def read_tensors(path: str | Path, names: Sequence[str], *, required: Sequence[str] | None = None,
                 max_bytes: int = MAX_TENSOR_FILE_BYTES, output_names: Sequence[str] | None = None,
                 ignore_labels: bool = False) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    """Read ``.safetensors``/``.npz`` tensors keyed by forward argument name, plus optional ``labels``.

    Returns the inputs in the order of ``names`` (optional arguments absent from the file are left out
    from the end) and the labels (or None). For a model with several outputs (``output_names``), labels are
    named per output, ``labels.<output>``, and come back as one int64 column per output, in that order, with
    -1 in the column of an output this file has no labels for. ``ignore_labels`` reads the inputs alone (to
    probe a model whose outputs are not known yet).

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
    check_tensor_file(p)  # elements and rows from the headers, before a byte of data is read
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
    if ignore_labels:
        d = {k: v for k, v in d.items() if k != "labels" and not k.startswith("labels.")}
    labels = d.pop("labels", None) if output_names is None else _output_labels(d, output_names, p.name)
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
    if labels is not None and output_names is None:  # per-output labels were checked column by column
        labels = _int_labels(labels, p.name)
    return tuple(ordered), labels


def _int_labels(labels: torch.Tensor, where: str) -> torch.Tensor:
    if labels.ndim != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise DataError(f"{where}: 'labels' must be a 1-D integer tensor of class indices "
                        f"(got {labels.dtype}, shape {tuple(labels.shape)})")
    return labels.to(torch.long)


def _output_labels(d: dict[str, torch.Tensor], output_names: Sequence[str], where: str) -> torch.Tensor | None:
    """Pop ``labels.<output>`` tensors from ``d``: one int64 column per output, -1 where an output has none."""
    if "labels" in d:
        raise DataError(f"data file {where}: the program has {len(output_names)} outputs ({', '.join(output_names)}); "
                        "name each output's labels 'labels.<output>', e.g. 'labels." + output_names[0] + "'")
    given = {k[len("labels."):]: d.pop(k) for k in [k for k in d if k.startswith("labels.")]}
    if unknown := sorted(set(given) - set(output_names)):
        raise DataError(f"data file {where}: labels for {', '.join(unknown)}, which the program does not output "
                        f"(its outputs: {', '.join(output_names)})")
    if not given:
        return None
    for k, t in given.items():
        _int_labels(t, f"{where} (labels.{k})")
    rows = {int(t.shape[0]) for t in given.values()}
    if len(rows) != 1:
        raise DataError(f"data file {where}: every labels.<output> needs the same number of rows")
    n = rows.pop()
    return torch.stack([given[o].long() if o in given else torch.full((n,), -1, dtype=torch.long)
                        for o in output_names], dim=1)


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
# ``image_files`` (the folder's layout, MAX_IMAGES) lives in the torch-free ``data_checks``: submit lists
# images the same way the worker does.


def preprocess_image(img: Any, pre: dict[str, Any], *, name: str = "(in memory)",
                     limits: DecodedLimits | None = None) -> torch.Tensor:
    """PIL image → normalized CHW float tensor: resize shorter side, center crop, scale, mean/std.

    ``img`` is an opened, not yet decoded, image: its header size, its size once resized and
    ``resize``/``crop`` are checked against the decoded-size limits before ``convert`` decodes it.

    Example:
        >>> from PIL import Image
        >>> pre = {"resize": 32, "crop": 28, "mean": [0, 0, 0], "std": [1, 1, 1]}
        >>> tuple(preprocess_image(Image.new("RGB", (40, 30)), pre).shape)
        (3, 28, 28)
        >>> preprocess_image(Image.new("L", (4000, 2)), pre, name="pano.png")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        modelpress.errors.DataError: image pano.png is 4000x2 (aspect ratio 2,000), over the limit of 16: ...
    """
    from PIL import Image

    limits = limits or current_limits()
    resize, crop = int(pre["resize"]), int(pre["crop"])
    check_preprocess_sides(resize, crop, limits)
    check_image_size(*img.size, name, limits, resize=resize)
    with pillow_guard(limits, f"image {name}"):
        img = img.convert("RGB")
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
    x = (x - mean) / std
    # A model trained on BGR channels (MobileViT's processor flips them after scaling): ``hf_images``.
    return x.flip(0) if pre.get("channels") == "bgr" else x


def read_images(root: str | Path, pre: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """Read and preprocess an image folder; returns (images N×3×crop×crop, labels or None, class names).

    Before the first image is decoded, the folder's decoded size (images × 3 × crop² × 4 bytes) is checked;
    each image's header before it is decoded (``preprocess_image``), with Pillow's bomb check raising at
    our pixel limit (it only warns below twice its own).

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> d = pathlib.Path(tempfile.mkdtemp()); Image.new("RGB", (9, 9)).save(d / "a.png")
        >>> x, y, classes = read_images(d, {"resize": 8, "crop": 8, "mean": [0, 0, 0], "std": [1, 1, 1]})
        >>> tuple(x.shape), y, classes
        ((1, 3, 8, 8), None, [])
    """
    from PIL import Image

    limits = current_limits()
    files, classes = image_files(root)
    resize, crop = int(pre["resize"]), int(pre["crop"])
    check_preprocess_sides(resize, crop, limits)
    check_image_data(len(files), crop, f"image folder {Path(root).name}", limits)
    # Filled in place: a list of tensors then torch.stack would hold the folder twice.
    out = torch.empty(len(files), 3, crop, crop)
    ys = []
    for i, (f, y) in enumerate(files):
        _check_size(f, MAX_IMAGE_BYTES, "image")
        try:
            with pillow_guard(limits, f"image {f.name}"), Image.open(f) as img:
                out[i] = preprocess_image(img, pre, name=f.name, limits=limits)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken image names itself
            raise DataError(f"image {f.name} could not be read ({type(e).__name__}: {str(e)[:200]})") from None
        ys.append(y)
    labels = torch.tensor(ys, dtype=torch.long) if classes else None
    return out, labels, classes


__all__ = ["align_class_labels", "check_labels", "check_train_format", "drop_eval_rows", "image_files", "label_indices",
           "make_task_data", "preprocess_image", "read_images", "read_jsonl", "read_tensors", "row_keys", "RowSplit",
           "split_rows", "TrainRows"]

"""Decoded-size checks of a user's data from headers and counts alone: torch-free, shared by submit and worker.

Submit (``sources.submit``) runs them so that a file that would decode huge is refused before a row
exists; the worker's readers (``sources.data``) run the same ones again before decoding, since a file can
reach the store without passing submit. Nothing here decodes data: image sizes come from the header
(``PIL.Image.open`` is lazy), tensor shapes from the safetensors JSON header and each ``.npy`` member's
header, text rows from a line count. The limits themselves are ``optimize.limits``.

Example:
    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "e.jsonl")
    >>> _ = open(f, "w").write('{"text": "a"}\\n\\n{"text": "b"}\\n')
    >>> jsonl_rows(f)
    2
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from modelpress.errors import DataError
from modelpress.optimize.limits import (
    DecodedLimits,
    check_batch_bytes,
    check_image_data,
    check_image_size,
    check_preprocess_sides,
    check_tensor_elements,
    check_text_length,
    check_text_tokens,
    current_limits,
    image_row_bytes,
    pillow_guard,
    text_row_bytes,
)

if TYPE_CHECKING:
    from modelpress.optimize.sources.ref import ModelRef

MAX_ROWS = 200_000
#: Bytes of one text (JSONL) data file: read whole by the worker's readers.
MAX_TEXT_FILE_BYTES = 256 * 1024**2
MAX_IMAGES = 100_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".gif")
IMAGENET = {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
_HEADER_MAX = 100 * 1024 * 1024  # a safetensors JSON header larger than this is not a data file's
_NPY_HEADER_MAX = 64 * 1024
Problem = tuple[tuple[str, ...], str]


# ----------------------------------------------------------------------------- tensor headers
def tensor_shapes(path: str | Path) -> dict[str, tuple[list[int], int]]:
    """Each tensor's (shape, bytes per element) from a ``.safetensors`` or ``.npz`` file's headers only.

    Raises ``DataError`` when the headers cannot be read (the message says which file and why).

    Example:
        >>> import tempfile, os, numpy as np
        >>> f = os.path.join(tempfile.mkdtemp(), "d.npz")
        >>> np.savez_compressed(f, x=np.zeros((4, 3), np.float32))
        >>> tensor_shapes(f)
        {'x': ([4, 3], 4)}
    """
    return {k: (shape, size) for k, (shape, size, _) in tensor_headers(path).items()}


def tensor_headers(path: str | Path) -> dict[str, tuple[list[int], int, str]]:
    """Each tensor's (shape, bytes per element, kind) from the headers only; kind is ``"int"``, ``"float"``,
    ``"bool"`` or ``"other"``.

    Example:
        >>> import tempfile, os, numpy as np
        >>> f = os.path.join(tempfile.mkdtemp(), "d.npz")
        >>> np.savez(f, labels=np.arange(4, dtype=np.uint8))
        >>> tensor_headers(f)
        {'labels': ([4], 1, 'int')}
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        return _safetensors_shapes(p)
    if suffix == ".npz":
        return _npz_shapes(p)
    raise DataError(f"data file {p.name}: tensors must be .safetensors or .npz (got {suffix or 'no suffix'})")


_ST_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_KINDS = {"i": "int", "u": "int", "f": "float", "b": "bool"}  # numpy dtype.kind → ours


def _st_kind(dtype: str) -> str:
    return ("bool" if dtype == "BOOL" else "int" if dtype[:1] in ("I", "U") else "float" if dtype[:1] in ("F", "B")
            else "other")


def _safetensors_shapes(p: Path) -> dict[str, tuple[list[int], int, str]]:
    try:
        with p.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(p.stat().st_size - 8, _HEADER_MAX):
                raise ValueError(f"its header claims {n} bytes, the file has {p.stat().st_size}")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
        out = {}
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            shape = meta.get("shape") if isinstance(meta, dict) else None
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise ValueError(f"tensor {name!r} has no valid shape")
            dtype = str(meta.get("dtype"))
            out[name] = (shape, _ST_ITEMSIZE.get(dtype, 8), _st_kind(dtype))
        return out
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"data file {p.name} is not a readable safetensors file ({e})") from None


def _npz_shapes(p: Path) -> dict[str, tuple[list[int], int, str]]:
    import numpy as np
    from numpy.lib import format as npy

    try:
        out = {}
        with zipfile.ZipFile(p) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    raise ValueError(f"member {info.filename} is not a .npy array")
                # Only the header is decompressed: a member that inflates to terabytes costs a few bytes here.
                with zf.open(info) as member:
                    version = npy.read_magic(member)
                    if version == (1, 0):
                        shape, _, dtype = npy.read_array_header_1_0(member, max_header_size=_NPY_HEADER_MAX)
                    else:
                        shape, _, dtype = npy.read_array_header_2_0(member, max_header_size=_NPY_HEADER_MAX)
                dt = np.dtype(dtype)
                out[info.filename[:-4]] = ([int(d) for d in shape], int(dt.itemsize) or 1, _KINDS.get(dt.kind, "other"))
        return out
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, SyntaxError, TypeError) as e:
        raise DataError(f"data file {p.name} is not a readable .npz archive ({e})") from None


def check_tensor_file(path: str | Path, limits: DecodedLimits | None = None) -> dict[str, tuple[list[int], int]]:
    """Refuse a tensor data file over ``max_tensor_elements`` or ``MAX_ROWS``, from its headers; returns them.

    Example:
        >>> import tempfile, os, numpy as np
        >>> f = os.path.join(tempfile.mkdtemp(), "d.npz")
        >>> np.savez(f, x=np.zeros((4, 3), np.float32))
        >>> check_tensor_file(f)["x"][0]
        [4, 3]
    """
    limits = limits or current_limits()
    p = Path(path)
    shapes = tensor_shapes(p)
    check_tensor_elements({k: s for k, (s, _) in shapes.items()}, p.name, limits)
    rows = max((s[0] for s, _ in shapes.values() if s), default=0)
    if rows > MAX_ROWS:
        raise DataError(f"data file {p.name} has {rows:,} rows, more than the limit of {MAX_ROWS:,}")
    return shapes


def tensor_row_bytes(shapes: dict[str, tuple[list[int], int]]) -> int:
    """Bytes of one row of the model's inputs (every tensor but ``labels``): what a latency batch repeats.

    Example:
        >>> tensor_row_bytes({"x": ([10, 64], 4), "labels": ([10], 8)})
        256
    """
    total = 0
    for name, (shape, itemsize) in shapes.items():
        if name != "labels" and shape:
            n = itemsize
            for d in shape[1:]:
                n *= d
            total += n
    return total


# ----------------------------------------------------------------------------- images
def image_files(root: str | Path) -> tuple[list[tuple[Path, int | None]], list[str]]:
    """Images under ``root``: class subfolders (sorted names → indices) or a flat folder (no labels).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "cat").mkdir(); _ = (d / "cat" / "1.png").write_bytes(b"")
        >>> image_files(d)[1]
        ['cat']
    """
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
        raise DataError(f"image folder {r.name} holds {len(files):,} images, over the limit of {MAX_IMAGES:,}")
    return files, classes


def image_header_size(path: str | Path, limits: DecodedLimits) -> tuple[int, int]:
    """(width, height) from an image file's header; Pillow's bomb check raises at ``max_image_pixels``.

    Example:
        >>> import tempfile, os
        >>> from PIL import Image
        >>> f = os.path.join(tempfile.mkdtemp(), "a.png"); Image.new("L", (30, 20)).save(f)
        >>> image_header_size(f, current_limits())
        (30, 20)
    """
    from PIL import Image

    with pillow_guard(limits, f"image {Path(path).name}"), Image.open(path) as img:
        return img.size


def check_image_files(paths: list[Path], limits: DecodedLimits, *, resize: int | None = None) -> None:
    """Refuse the first image whose header size is over a limit (pixels, aspect, resized pixels).

    An image Pillow cannot identify is left to the reader, which names it.

    Example:
        >>> check_image_files([], current_limits())  # nothing to refuse
    """
    for p in paths:
        try:
            w, h = image_header_size(p, limits)
        except DataError:
            raise
        except Exception:  # noqa: BLE001 - unreadable images are the reader's to name, with its own message
            continue
        check_image_size(w, h, p.name, limits, resize=resize)


def preprocess_sides(ref: "ModelRef") -> tuple[int, int] | None:
    """(resize, crop) a vision ref will use, as the worker's ``VisionSource.preprocess`` decides them, or None
    when that needs timm's config (a ``timm:`` model without ``preprocess.crop``) or the values are not ints.

    Example:
        >>> from modelpress.optimize.sources.ref import parse_model_ref
        >>> preprocess_sides(parse_model_ref("torchvision:resnet18", weights="w", data={"eval": "i"},
        ...                                  preprocess={"crop": 4096}))
        (4096, 4096)
    """
    given = dict(ref.preprocess or {})
    if ref.kind == "timm" and "crop" not in given:
        return None
    pre = {**IMAGENET, **given}
    if "crop" in given and "resize" not in given:
        pre["resize"] = pre["crop"]
    resize, crop = pre["resize"], pre["crop"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (resize, crop)):
        return None
    return resize, crop


# ----------------------------------------------------------------------------- text
def jsonl_rows(path: str | Path, *, stop_after: int | None = None) -> int:
    """Non-blank lines of a JSONL file (its rows), counted without parsing; stops past ``stop_after``."""
    n = 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                n += 1
                if stop_after is not None and n > stop_after:
                    break
    return n


def hf_default_max_length(folder: str | Path) -> tuple[int, int | None]:
    """(the max_length the worker uses when none is given, the model's positions) from the folder's JSON files.

    Mirrors ``HFSource._max_length``: the tokenizer's ``model_max_length`` capped at 512 and at the
    config's ``max_position_embeddings``.

    Example:
        >>> hf_default_max_length("/nonexistent")
        (512, None)
    """
    positions = _json_int(Path(folder) / "config.json", "max_position_embeddings")
    tok = _json_int(Path(folder) / "tokenizer_config.json", "model_max_length")
    return min(tok or 512, 512, positions or 512), positions


def _json_int(path: Path, key: str) -> int | None:
    try:
        if path.stat().st_size > 10 * 1024 * 1024:
            return None
        v = json.loads(path.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError, UnicodeDecodeError):
        return None
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 2**62 else None


# ----------------------------------------------------------------------------- one file at submit
def tensor_limit_problems(path: str | Path, limits: DecodedLimits | None = None) -> list[str]:
    """A tensor file's elements and rows over the limits, from its headers; ``[]`` when within them or when the
    headers cannot be read (the file's own checks name that).

    Example:
        >>> tensor_limit_problems("/nonexistent.npz")
        []
    """
    try:
        tensor_shapes(path)
    except DataError:
        return []
    try:
        check_tensor_file(path, limits)
    except DataError as e:
        return [str(e)]
    return []


def tensor_label_problems(path: str | Path) -> list[str]:
    """A tensor file's ``labels`` as the worker's reader would refuse them, from the headers: not a 1-D integer
    tensor, or not one per row of the inputs; also inputs of differing row counts. ``[]`` when fine, when there
    are no labels, or when the headers cannot be read (the file's own checks name that).

    Example:
        >>> import tempfile, os, numpy as np
        >>> f = os.path.join(tempfile.mkdtemp(), "t.npz")
        >>> np.savez(f, x=np.zeros((4, 3), np.float32), labels=np.zeros(4, np.float32))
        >>> tensor_label_problems(f)
        ["data file t.npz: 'labels' must be a 1-D integer tensor of class indices (got float, shape [4])"]
    """
    p = Path(path)
    try:
        headers = tensor_headers(p)
    except DataError:
        return []
    rows = {name: shape[0] if shape else None for name, (shape, _, _) in headers.items()}
    if len(set(rows.values())) > 1:
        return [f"data file {p.name}: every tensor needs the same number of rows (first dimension); got "
                + ", ".join(f"{name} {list(headers[name][0])}" for name in sorted(headers))]
    if "labels" in headers:
        shape, _, kind = headers["labels"]
        if len(shape) != 1 or kind != "int":
            return [f"data file {p.name}: 'labels' must be a 1-D integer tensor of class indices "
                    f"(got {kind}, shape {shape})"]
    return []


def jsonl_objects(path: str | Path, *, max_bytes: int = MAX_TEXT_FILE_BYTES) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each non-blank line of a JSONL data file as ``(line number, object)``, bounded: the file's bytes, at most
    ``MAX_ROWS`` rows, strict UTF-8; a line that is not a JSON object is a ``DataError`` naming it.

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "d.jsonl")
        >>> _ = open(f, "w").write('{"text": "a"}\\n\\n{"text": "b"}\\n')
        >>> list(jsonl_objects(f))
        [(1, {'text': 'a'}), (3, {'text': 'b'})]
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {p.name} does not exist or is not a file")
    if p.stat().st_size > max_bytes:
        raise DataError(f"data file {p.name} is {p.stat().st_size} bytes, over the limit of {max_bytes} bytes")
    rows = 0
    try:
        with open(p, encoding="utf-8", errors="strict") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                rows += 1
                if rows > MAX_ROWS:
                    raise DataError(f"{p.name}: more than {MAX_ROWS} rows")
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{p.name} line {lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{p.name} line {lineno}: each row must be a JSON object")
                yield lineno, row
    except UnicodeDecodeError as e:
        raise DataError(f"{p.name}: not UTF-8 text ({e.reason})") from None
    if rows == 0:
        raise DataError(f"{p.name}: no rows")


def lm_text_problems(path: str | Path, *, read_limit: int = 64 * 1024**2) -> list[str]:
    """A causal LM's JSONL text at submit: what ``jsonl_problems`` finds, then any row with more than a ``text``
    (an LM is judged on its own text: a label or a second text would be silently ignored otherwise).

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "e.jsonl")
        >>> _ = open(f, "w").write('{"text": "a", "label": 1}\\n')
        >>> lm_text_problems(f)
        ["data file e.jsonl line 1: a causal LM's rows hold 'text' only, not 'label'"]
    """
    if found := jsonl_problems(path, read_limit=read_limit):
        return found
    if Path(path).stat().st_size > read_limit:
        return []
    for lineno, row in jsonl_objects(path):
        if extra := sorted(set(row) - {"text"}):
            return [f"data file {Path(path).name} line {lineno}: a causal LM's rows hold 'text' only, not "
                    f"{', '.join(repr(k) for k in extra)}"]
    return []


def read_at_submit(path: str | Path, read: Callable[[Path], Any], *, read_limit: int) -> tuple[list[str], Any]:
    """Run the worker's reader ``read`` on a JSONL file at submit: (its problem as one line, or none; what it
    read, or None). Too many rows are refused at any size; a file over ``read_limit`` bytes is left to the worker.

    Example:
        >>> read_at_submit("/nope.jsonl", lambda p: p.read_text(), read_limit=1 << 20)[0]
        ['data file /nope.jsonl does not exist']
    """
    p = Path(path)
    if not p.is_file():
        return [f"data file {path} does not exist"], None
    if over := jsonl_limit_problems(p):
        return over, None
    if p.stat().st_size > read_limit:
        return [], None
    try:
        return [], read(p)
    except DataError as e:
        return [str(e) if str(e).startswith("data file") else f"data file {e}"], None


def jsonl_limit_problems(path: str | Path) -> list[str]:
    """A JSONL file with more rows than the worker reads (``MAX_ROWS``), counted without parsing.

    Example:
        >>> jsonl_limit_problems("/dev/null")
        []
    """
    rows = jsonl_rows(path, stop_after=MAX_ROWS)
    if rows > MAX_ROWS:
        return [f"data file {Path(path).name} has more than {MAX_ROWS:,} rows, the limit"]
    return []


def jsonl_problems(path: str | Path, *, classes: int | None = None,
                   label_names: set[str] | frozenset[str] = frozenset(), read_limit: int = 64 * 1024**2) -> list[str]:
    """What is wrong with a JSONL data file at submit: more rows than ``MAX_ROWS`` (counted at any size), and
    for files up to ``read_limit`` bytes every line parsed (a ``text`` string, labels within the classes).

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "e.jsonl")
        >>> _ = open(f, "w").write('{"text": "a", "label": 3}\\n')
        >>> jsonl_problems(f, classes=2)
        ["data file e.jsonl line 1: label 3 is outside the model's 2 classes (0..1)"]
    """
    p = Path(path)
    if over := jsonl_limit_problems(p):
        return over
    if p.stat().st_size > read_limit:
        return []  # too large to read at submit; the worker's reader checks every line
    problems: list[str] = []
    rows = 0
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        return [f"data file {p.name} is not UTF-8 text ({e})"]
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        rows += 1
        try:
            row = json.loads(line)
        except ValueError as e:
            problems.append(f"data file {p.name} line {n}: not valid JSON ({e})")
        else:
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                problems.append(f"data file {p.name} line {n}: expected an object with a \"text\" string")
            elif "label" in row:
                label = row["label"]
                if isinstance(label, bool) or not isinstance(label, (int, str)):
                    problems.append(f"data file {p.name} line {n}: label {label!r} is neither a class index nor "
                                    "a class name")
                elif isinstance(label, int) and classes is not None and not 0 <= label < classes:
                    problems.append(f"data file {p.name} line {n}: label {label} is outside the model's "
                                    f"{classes} classes (0..{classes - 1})")
                elif isinstance(label, str) and label_names and label not in label_names:
                    problems.append(f"data file {p.name} line {n}: label {label!r} is not one of the model's "
                                    f"classes (id2label: {', '.join(sorted(label_names))})")
        if len(problems) >= 5:
            problems.append(f"data file {p.name}: stopped after 5 problems")
            break
    if rows == 0:
        problems.append(f"data file {p.name} has no rows")
    return problems


def image_folder_limit_problems(folder: str | Path, limits: DecodedLimits | None = None) -> list[str]:
    """The folder's image count and each image's header (pixels, aspect ratio) against the limits.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> d = pathlib.Path(tempfile.mkdtemp()); Image.new("L", (100_000, 1)).save(d / "pano.png")
        >>> image_folder_limit_problems(d)  # doctest: +ELLIPSIS
        ['image pano.png is 100000x1 (aspect ratio 100,000), over the limit of 16: ...']
    """
    limits = limits or current_limits()
    try:
        files, _ = image_files(folder)
        check_image_files([f for f, _ in files], limits)
    except DataError as e:
        return [str(e)]
    return []


# ----------------------------------------------------------------------------- one ref at submit
def decoded_size_problems(ref: "ModelRef", limits: DecodedLimits | None = None) -> list[Problem]:
    """What the ref's data would decode to, against the limits, as (field path, message): submit's check of the
    limits that need the ref as well as the files (crop, max_length, latency batches). Empty when fine.

    Files that are missing or unreadable are left to the other checks, which name them.

    Example:
        >>> from modelpress.optimize.sources.ref import parse_model_ref
        >>> ref = parse_model_ref("torchvision:resnet18", weights="w", data={"eval": "/nope"},
        ...                       preprocess={"crop": 4096})
        >>> decoded_size_problems(ref)[0][0]
        ('preprocess',)
    """
    limits = limits or current_limits()
    if ref.data is None:
        return []
    files = [(name, Path(p)) for name, p in (("eval", ref.data.eval), ("calibration", ref.data.calibration),
                                             ("train", ref.data.train)) if p]
    biggest = max(ref.latency_batches)
    problems: list[Problem] = []

    def attempt(where: tuple[str, ...], check: Any, *args: Any, **kwargs: Any) -> bool:
        try:
            check(*args, **kwargs)
        except DataError as e:
            problems.append((where, str(e)))
            return False
        return True

    if ref.kind in ("torchvision", "timm"):
        sides = preprocess_sides(ref)
        if sides is None or not attempt(("preprocess",), check_preprocess_sides, *sides, limits, prefix=""):
            return problems
        crop = sides[1]
        for name, p in files:
            if p.is_dir():
                try:
                    images, _ = image_files(p)
                except DataError:
                    continue  # no images, too many: named by the folder's own check
                attempt(("data", name), check_image_data, len(images), crop, f"image folder {p.name}", limits)
        attempt(("latency_batches",), check_batch_bytes, biggest, image_row_bytes(crop), "the largest latency batch",
                limits)
    elif ref.kind == "hf":
        default, positions = hf_default_max_length(ref.path or "")
        length = ref.max_length or default
        if not attempt(("max_length",), check_text_length, length, limits, positions=positions):
            return problems
        for name, p in files:
            if p.is_file() and p.suffix.lower() == ".jsonl":
                rows = jsonl_rows(p, stop_after=MAX_ROWS)
                attempt(("data", name), check_text_tokens, rows, length, p.name, limits)
        attempt(("latency_batches",), check_batch_bytes, biggest, text_row_bytes(length), "the largest latency batch",
                limits)
    elif ref.kind == "export":
        eval_file = files[0][1] if files else None
        if eval_file is not None and eval_file.is_file() and eval_file.suffix.lower() in (".safetensors", ".npz"):
            try:
                shapes = tensor_shapes(eval_file)
            except DataError:
                return problems  # named by the file's own check
            attempt(("latency_batches",), check_batch_bytes, biggest, tensor_row_bytes(shapes),
                    "the largest latency batch", limits)
    return problems


__all__ = ["IMAGENET", "IMAGE_SUFFIXES", "MAX_IMAGES", "MAX_ROWS", "MAX_TEXT_FILE_BYTES", "check_image_files", "check_tensor_file", "jsonl_objects", "lm_text_problems", "read_at_submit",
           "decoded_size_problems", "hf_default_max_length", "image_files", "image_folder_limit_problems",
           "image_header_size", "jsonl_limit_problems", "jsonl_problems", "jsonl_rows", "preprocess_sides",
           "tensor_headers", "tensor_label_problems", "tensor_limit_problems", "tensor_row_bytes", "tensor_shapes"]

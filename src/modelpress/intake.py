"""Own models and data at submit time (issue 9): cheap checks, staging into the store, the reuse key.

A user names a model file or folder plus data files (``hf:PATH``, ``torchvision:NAME`` + weights,
``timm:NAME`` + weights, ``export:PATH.pt2``; see ``optimize.sources.ref``). Before any row exists:

1. ``resolve_paths`` makes every path absolute (relative to the manifest's folder or the shell's) for
   reading the files here, and renames the model relative to that folder: a job row never holds the
   submitter's absolute paths (issue 20 item 6);
2. ``check_ref`` runs the checks that need no torch and read little: missing files, an HF config with
   ``auto_map`` (remote code), an unknown architecture name, an unreadable data file, labels outside
   the class count, steps the source cannot take. Each problem names its field, so a manifest can point
   at the line;
3. ``stage_ref`` puts every file into the artifact store, content-addressed (a folder becomes a small
   index object, ``ArtifactStore.put_tree``), and returns the ref the job row stores, with its
   ``content_sha256``: the model part of the reuse key.

On the worker, ``localize_ref`` turns the stored ref back into local, hash-checked paths.

What a check here cannot see (a tensor shape that does not fit, input names of an HF model's forward)
the worker finds when it loads the model, and the job fails naming it.

No torch, transformers or torchvision import here: submitting stays cheap.

Example:
    >>> from modelpress.optimize.sources import parse_model_ref
    >>> ref = parse_model_ref("torchvision:resnet9000", weights="w.safetensors", data={"eval": "imgs"})
    >>> [msg for _, msg in check_ref(ref, max_bytes=1 << 30)][0]  # doctest: +ELLIPSIS
    "unknown torchvision model 'resnet9000'..."
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import struct
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelpress.optimize.builtin_weights import module_source_file, module_source_sha256
from modelpress.optimize.errors import ModelLoadError, UserInputError

if TYPE_CHECKING:
    from modelpress.optimize.recipes import Recipe
    from modelpress.optimize.sources import ModelRef
    from modelpress.store import ArtifactStore

# (field path inside the model entry, message): the manifest turns the path into a line number.
Problem = tuple[tuple[str, ...], str]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
DATA_SUFFIXES = (".jsonl", ".safetensors", ".npz")
# JSONL files up to this size are read whole at submit to check labels; larger ones only by the worker.
JSONL_CHECK_BYTES = 64 * 1024 * 1024
# Classifier weight names of torchvision/timm architectures, most specific first: their first dimension
# is the class count. Read from the safetensors header, so no tensor is loaded.
_CLASSIFIER_KEYS = ("fc.weight", "head.fc.weight", "head.weight", "heads.head.weight", "classifier.weight",
                    "classifier.1.weight", "classifier.3.weight", "classifier.6.weight", "last_linear.weight")
# Which modules of optimize/sources make up each kind's code: their bytes join the reuse key, so a
# changed loader or reader never reuses results measured with the old one.
_SOURCE_MODULES = {"hf": ("hf", "data", "base"), "torchvision": ("vision", "data", "base"),
                   "timm": ("vision", "data", "base"), "export": ("export", "data", "base"),
                   "registered": ("registered", "data", "base")}
_SOURCE_PACKAGES = {"hf": ("transformers", "tokenizers"), "torchvision": ("torchvision", "pillow"),
                    "timm": ("timm", "torchvision", "pillow"), "export": (), "registered": ()}


class IntakeError(UserInputError):
    """A model reference refused at submit; ``problems`` keeps each (field, message) pair."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(loc)}: {msg}" if loc else msg for loc, msg in problems))


# ----------------------------------------------------------------------------- paths
def resolve_paths(ref: "ModelRef", base_dir: str | Path) -> "ModelRef":
    """The same ref with ``path``, ``weights`` and data files absolute (relative ones under ``base_dir``).

    The absolute paths are for reading the files at submit only: ``stage_ref`` replaces each by a store
    key. The ref's ``name`` (an ``hf:``/``export:`` model's path, which the job row keeps) becomes
    ``row_name``'s: relative to ``base_dir``, never the submitter's absolute path.

    Example:
        >>> from modelpress.optimize.sources import parse_model_ref
        >>> ref = resolve_paths(parse_model_ref("export:/srv/team/m.pt2", data={"eval": "d.npz"}), "/srv/team")
        >>> ref.path, ref.data.eval, ref.name
        ('/srv/team/m.pt2', '/srv/team/d.npz', 'm.pt2')
    """
    base = Path(base_dir).expanduser()

    def absolute(p: str | None) -> str | None:
        if p is None:
            return None
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (base / q).absolute())

    fields: dict[str, Any] = {"path": absolute(ref.path), "weights": absolute(ref.weights)}
    if ref.data is not None:
        fields["data"] = {"eval": absolute(ref.data.eval), "calibration": absolute(ref.data.calibration)}
    if ref.kind in ("hf", "export"):
        fields["name"] = row_name(ref.name, base)
    return ref.with_paths(**fields)


def row_name(path: str, base_dir: str | Path) -> str:
    """How a job row names a file the submitter gave: its path relative to ``base_dir`` (the manifest's
    folder, or the working directory for ``--model``), or just its own name when it lies outside.

    Rows are read by everyone who can list jobs; where a submitter keeps files (``/home/alice/...``) is
    not theirs to know, and it means nothing on the worker, which reads the store.

    Example:
        >>> row_name("/home/alice/team/models/x", "/home/alice/team"), row_name("/data/shared/y/", "/home/alice")
        ('models/x', 'y')
    """
    base = os.path.abspath(os.path.expanduser(str(base_dir)))
    full = os.path.abspath(os.path.join(base, os.path.expanduser(path)))
    for b, f in ((base, full), (os.path.realpath(base), os.path.realpath(full))):
        rel = os.path.relpath(f, b)
        if rel != "." and rel != ".." and not rel.startswith("../"):
            return Path(rel).as_posix()
    return Path(full).name or "model"


# ----------------------------------------------------------------------------- cheap checks
def check_ref(ref: "ModelRef", *, max_bytes: int) -> list[Problem]:
    """Every problem in the ref's files found without torch, as (field path, message); empty when fine.

    ``max_bytes`` bounds each file and each folder (``MODELPRESS_MAX_WEIGHTS_BYTES``). Recipes are
    checked separately (``step_problems``): a manifest runs each model with several.

    Example:
        >>> from modelpress.optimize.sources import parse_model_ref
        >>> check_ref(parse_model_ref("export:/nope/m.pt2", data={"eval": "/nope/d.npz"}), max_bytes=1 << 30)[0]
        (('model',), 'exported program /nope/m.pt2 does not exist')
    """
    problems: list[Problem] = []
    classes: int | None = None
    label_names: set[str] = set()
    inputs: list[str] | None = None
    if ref.kind == "hf":
        classes, label_names = _check_hf_folder(Path(ref.path or ""), max_bytes, problems)
    elif ref.kind in ("torchvision", "timm"):
        _check_arch_name(ref.kind, ref.name, problems)
        classes = _check_weights(Path(ref.weights or ""), max_bytes, problems)
    elif ref.kind == "export":
        inputs = _check_pt2(Path(ref.path or ""), max_bytes, problems)
    elif ref.weights:
        _check_weights(Path(ref.weights), max_bytes, problems)
    if ref.data is not None:
        for name in ("eval", "calibration"):
            path = getattr(ref.data, name)
            if path is not None:
                found = check_data_file(Path(path), kind=ref.kind, classes=classes, label_names=label_names,
                                        max_bytes=max_bytes)
                if not found and inputs:
                    found = _check_input_names(Path(path), inputs)
                problems += [(("data", name), m) for m in found]
    from modelpress.optimize.sources.data_checks import decoded_size_problems  # torch-free: crop, max_length, batches

    problems += decoded_size_problems(ref)
    return list(dict.fromkeys(problems))


def step_problems(ref: "ModelRef", recipe: "Recipe") -> list[Problem]:
    """The recipe's steps that cannot run on this kind of model, with the reason (torch-free).

    Example:
        >>> from modelpress.optimize.recipes import resolve_recipe
        >>> from modelpress.optimize.sources import parse_model_ref
        >>> ref = parse_model_ref("export:m.pt2", data={"eval": "d.npz"})
        >>> step_problems(ref, resolve_recipe("prune50-finetune"))[0][1][:40]
        "recipe 'prune50-finetune': step 'prune_s"
    """
    from modelpress.optimize.sources import unsupported_reason

    return [(("recipes",), f"recipe {recipe.name!r}: {why}") for step in recipe.steps
            if (why := unsupported_reason(ref.kind, step.type))]


def _check_hf_folder(folder: Path, max_bytes: int, problems: list[Problem]) -> tuple[int | None, set[str]]:
    # The folder's own rules (config entries that run or fetch code, shard indexes naming files elsewhere,
    # tokenizer code) live in optimize.sources.hf_files, torch-free, so the worker applies the same ones.
    from modelpress.api import check_weights_file
    from modelpress.optimize.sources.hf_files import check_folder

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
    archs = config.get("architectures") or []
    if not any(isinstance(a, str) and a.endswith("ForSequenceClassification") for a in archs):
        return None, set()  # a base encoder: no class count to check labels against
    return (classes if isinstance(classes, int) and classes > 0 else None), names


def architecture_names(kind: str) -> tuple[str, ...]:
    """The model names ``torchvision:``/``timm:`` accept, from a static list (no torchvision/timm import).

    ``tests/test_architecture_names.py`` compares the lists with the installed packages.

    Example:
        >>> "resnet18" in architecture_names("torchvision")
        True
    """
    from modelpress import architecture_names as names

    return names.TORCHVISION if kind == "torchvision" else names.TIMM


def _check_arch_name(kind: str, name: str, problems: list[Problem]) -> None:
    known = architecture_names(kind)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        problems.append((("model",), f"unknown {kind} model {name!r}"
                                     + (f"; did you mean {', '.join(close)}?" if close else
                                        f"; {kind} has {len(known)} models, e.g. {', '.join(known[:5])}")))


def _check_weights(path: Path, max_bytes: int, problems: list[Problem]) -> int | None:
    """Exists, under the limit, structurally sound; returns the classifier's class count when readable."""
    from modelpress.api import check_weights_file

    where = ("weights",)
    if not path.is_file():
        problems.append((where, f"weights file {path} does not exist"))
        return None
    size = path.stat().st_size
    if size > max_bytes:
        problems.append((where, f"weights file {path.name} is {size} bytes, over the limit of {max_bytes} bytes "
                                "(MODELPRESS_MAX_WEIGHTS_BYTES)"))
        return None
    try:
        check_weights_file(path, max_bytes=max_bytes)
    except ModelLoadError as e:
        problems.append((where, str(e)))
        return None
    if path.suffix.lower() != ".safetensors":
        return None
    header = safetensors_header(path)
    for key in _CLASSIFIER_KEYS:
        shape = header.get(key, {}).get("shape") if isinstance(header.get(key), dict) else None
        if isinstance(shape, list) and len(shape) == 2:
            return int(shape[0])
    return None


def _check_pt2(path: Path, max_bytes: int, problems: list[Problem]) -> list[str] | None:
    """Only what torch.export.save writes for a CPU program, only pure tensor operators (``pt2_archive``,
    torch-free); returns the program's input names."""
    from modelpress.optimize.sources.pt2_archive import check_archive

    if not path.is_file():
        problems.append((("model",), f"exported program {path} does not exist"))
        return None
    try:
        return check_archive(path, max_bytes=max_bytes, verify_data=True)
    except ModelLoadError as e:
        problems.append((("model",), str(e)))
        return None


def _check_input_names(path: Path, inputs: list[str]) -> list[str]:
    """Tensors by forward argument name: the data's names (besides ``labels``) must be the program's inputs."""
    if path.suffix.lower() == ".safetensors":
        names = {k for k in safetensors_header(path) if k != "__metadata__"}
    elif path.suffix.lower() == ".npz":
        with zipfile.ZipFile(path) as zf:
            names = {n[:-4] for n in zf.namelist()}
    else:
        return []
    names.discard("labels")
    missing, extra = [n for n in inputs if n not in names], sorted(names - set(inputs))
    if not missing and not extra:
        return []
    return [f"data file {path.name} holds tensors {', '.join(sorted(names)) or '(none)'} but the program's inputs are "
            f"{', '.join(inputs)}" + (f" (missing: {', '.join(missing)})" if missing else "")
            + (f" (not an input: {', '.join(extra)})" if extra else "")
            + "; name each tensor after its forward argument, plus an optional 'labels'"]


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor name → dtype, shape, offsets); ``{}`` when unreadable.

    Example:
        >>> safetensors_header(Path("/nonexistent.safetensors"))
        {}
    """
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(path.stat().st_size - 8, 100 * 1024 * 1024):
                return {}
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError, UnicodeDecodeError):
        return {}
    return header if isinstance(header, dict) else {}


def check_data_file(path: Path, *, kind: str, classes: int | None = None, label_names: set[str] | frozenset[str] = frozenset(),
                    max_bytes: int) -> list[str]:
    """What is wrong with one data file (or image folder) for a model of ``kind``; empty when fine.

    Example:
        >>> check_data_file(Path("/nope.csv"), kind="hf", max_bytes=1 << 30)
        ['data file /nope.csv does not exist']
    """
    if path.is_dir():
        return _check_image_folder(path, kind=kind, classes=classes, max_bytes=max_bytes)
    if not path.is_file():
        return [f"data file {path} does not exist"]
    size = path.stat().st_size
    if size > max_bytes:
        return [f"data file {path.name} is {size} bytes, over the limit of {max_bytes} bytes "
                "(MODELPRESS_MAX_WEIGHTS_BYTES)"]
    if size == 0:
        return [f"data file {path.name} is empty"]
    suffix = path.suffix.lower()
    from modelpress.optimize.sources.data_checks import tensor_limit_problems

    # Shapes in the headers first: a header declaring a huge shape is refused by the limit it breaks.
    if suffix in (".safetensors", ".npz") and (over := tensor_limit_problems(path)):
        return over
    if suffix == ".jsonl":
        if kind != "hf":
            return [f"data file {path.name}: JSONL text data needs a model with a tokenizer (hf:...); give a "
                    f"{kind} model tensors (.safetensors/.npz) or an image folder"]
        return _check_jsonl(path, classes=classes, label_names=label_names)
    if suffix == ".safetensors":
        header = safetensors_header(path)
        tensors = [k for k in header if k != "__metadata__"]
        if not tensors:
            return [f"data file {path.name} is not a readable safetensors file (bad header), or holds no tensors"]
        from modelpress.api import _check_safetensors

        try:
            with path.open("rb") as f:
                _check_safetensors(path, f, f.read(8), size)
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


def _check_jsonl(path: Path, *, classes: int | None, label_names: set[str] | frozenset[str]) -> list[str]:
    from modelpress.optimize.sources.data_checks import jsonl_problems  # torch-free; rows counted at any size

    return jsonl_problems(path, classes=classes, label_names=label_names, read_limit=JSONL_CHECK_BYTES)


def _check_image_folder(folder: Path, *, kind: str, classes: int | None, max_bytes: int) -> list[str]:
    if kind not in ("torchvision", "timm", "registered", "export"):
        return [f"data folder {folder}: a folder of images is data for an image model (torchvision:/timm:), not "
                f"for a {kind} model"]
    from modelpress.store import list_tree

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
    from modelpress.optimize.sources.data_checks import image_folder_limit_problems

    return image_folder_limit_problems(folder)  # image count, then each header: pixels and aspect ratio


# ----------------------------------------------------------------------------- staging
def stage_ref(ref: "ModelRef", *, store: "ArtifactStore", max_bytes: int, prefix: str = "inputs") -> "ModelRef":
    """Put every file the ref names into ``store`` (content-addressed) and return the ref a job row keeps.

    Files become ``<prefix>/<sha256><suffix>`` keys, folders (an HF model, an image folder) a
    ``<prefix>/<sha256>.tree.json`` index; ``content_sha256`` is set (``content_id``). Staging the same
    files twice writes nothing the second time.

    Example:
        >>> staged = stage_ref(resolve_paths(ref, "team/"), store=ArtifactStore("/srv/store"),
        ...                    max_bytes=1 << 31)  # doctest: +SKIP
        >>> staged.path  # doctest: +SKIP
        'inputs/3f…e1.tree.json'
    """

    def put(p: str | None) -> str | None:
        if p is None:
            return None
        path = Path(p)
        if path.is_dir():
            return store.put_tree(path, prefix=prefix, max_bytes=max_bytes).key
        return store.put_file(path, prefix=prefix).key

    fields: dict[str, Any] = {"path": put(ref.path), "weights": put(ref.weights)}
    if ref.data is not None:
        fields["data"] = {"eval": put(ref.data.eval), "calibration": put(ref.data.calibration)}
    staged = ref.with_paths(**fields)
    return staged.with_paths(content_sha256=content_id(staged))


def content_id(staged: "ModelRef") -> str:
    """The model part of the reuse key: sha256 over the staged files' content keys, the source kind and
    name, the measuring options and the version of the code that reads them (``source_version``).

    Two refs with the same files and options share it wherever the files were on the user's disk;
    another architecture name over the same weights, another data file, or a changed loader does not.

    Example:
        >>> from modelpress.optimize.sources import parse_model_ref
        >>> a = parse_model_ref("timm:resnet18", weights="inputs/" + "1" * 64 + ".safetensors", data={"eval": "x"})
        >>> content_id(a) != content_id(a.with_paths(name="resnet34"))
        True
    """
    d = staged.to_dict()
    d.pop("content_sha256", None)
    if staged.kind in ("hf", "export"):
        d.pop("name", None)  # the user's path: where the files were, not what they are
    d["source_version"] = source_version(staged.kind)
    if staged.kind == "registered":
        from modelpress.api import builtin_content_id

        # A factory's own code and release decide what it builds (issue 10 item 6).
        d["factory"] = builtin_content_id(staged.name) or f"unowned:{staged.name}"
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def source_version(kind: str) -> str:
    """What version of the code turns a ref of ``kind`` into a model: the sha256 of modelpress's source
    modules for it plus the versions of the libraries it loads with (transformers, torchvision, timm).

    Example:
        >>> source_version("export") == source_version("export")
        True
    """
    h = hashlib.sha256(kind.encode())
    for mod in _SOURCE_MODULES.get(kind, ()):
        h.update(f"\n{mod}:{module_source_sha256(f'modelpress.optimize.sources.{mod}')}".encode())
    for pkg in _SOURCE_PACKAGES.get(kind, ()):
        try:
            h.update(f"\n{pkg}=={version(pkg)}".encode())
        except PackageNotFoundError:
            h.update(f"\n{pkg}: not installed".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- the worker side
def localize_ref(ref: "ModelRef", *, store: "ArtifactStore", cache_dir: str | os.PathLike[str]) -> "ModelRef":
    """The staged ref with every store key replaced by a local, hash-checked path (folders rebuilt).

    Keys must be content keys inside the store (``ArtifactStore.key_for``): a row cannot point a worker
    at a file elsewhere, and bytes changed after staging fail their hash check.

    Example:
        >>> local = localize_ref(staged, store=store, cache_dir="/var/mp/store-cache")  # doctest: +SKIP
        >>> Path(local.path, "config.json").is_file()  # doctest: +SKIP
        True
    """
    from modelpress.store import is_tree_ref

    def get(key: str | None) -> str | None:
        if key is None:
            return None
        if is_tree_ref(key):
            return str(store.fetch_tree(key, cache_dir=cache_dir))
        return str(store.fetch(key, cache_dir=cache_dir))

    fields: dict[str, Any] = {"path": get(ref.path), "weights": get(ref.weights)}
    if ref.data is not None:
        fields["data"] = {"eval": get(ref.data.eval), "calibration": get(ref.data.calibration)}
    return ref.with_paths(**fields)


def name_staged_files(message: str, stored: dict[str, Any] | None) -> str:
    """A worker's error message with staged files named by what they are, not by their content keys.

    On the worker every file is a store object named by its sha256 (``5ee6….jsonl``) or a folder
    rebuilt under ``trees/<sha256>``; a person fixing the input needs "the eval data" instead.

    Example:
        >>> key = "inputs/" + "ab" * 32 + ".jsonl"
        >>> name_staged_files(f"/c/{'ab' * 32}.jsonl line 2: bad label", {"data": {"eval": key}})
        'eval data (data.eval, ababababababababab….jsonl) line 2: bad label'
    """
    import re

    if not isinstance(stored, dict):
        return message
    data = stored.get("data") if isinstance(stored.get("data"), dict) else {}
    roles = [("path", stored.get("path"), "model files (model)"), ("weights", stored.get("weights"), "weights file"),
             ("data.eval", data.get("eval"), "eval data"), ("data.calibration", data.get("calibration"),
                                                            "calibration data")]
    for field, key, what in roles:
        if not isinstance(key, str):
            continue
        sha = key.rsplit("/", 1)[-1].split(".", 1)[0]
        if len(sha) != 64:
            continue
        short = f"{sha[:18]}…{key.rsplit('/', 1)[-1][64:]}" if field != "path" or not key.endswith(".tree.json") else ""
        label = what if field == "path" else f"{what} ({field}, {short})"
        message = re.sub(rf"[^\s'\"()\[\]]*{sha}[A-Za-z0-9._-]*", label, message)
    return message


__all__ = ["IntakeError", "Problem", "architecture_names", "check_data_file", "check_ref", "content_id",
           "localize_ref", "module_source_file", "name_staged_files", "module_source_sha256", "resolve_paths", "row_name",
           "safetensors_header", "source_version", "stage_ref", "step_problems"]

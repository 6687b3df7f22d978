"""A ``torch.export.save`` archive (``.pt2``) read as data: allow-listed members, operators and fields.

No torch here: ``submit_export`` checks a user's ``.pt2`` at submit with this module, and the worker checks it
again before torch sees anything (``export.load_program``). What torch 2.13 would do with a hostile
archive, and why each rule exists (docs/faults.md, "Exported programs (.pt2)"):

- members under ``data/aotinductor/`` make ``torch.export.load`` ``dlopen`` a shared library (code runs);
  ``custom_obj*``/``opaque_obj*`` constants and ``use_pickle`` payloads are unpickled; legacy
  ``data/weights/<model>.pt`` files and ``data/sample_inputs/<model>.pt`` are read with a silent
  ``weights_only=False`` retry. So only the members ``torch.export.save`` writes for a CPU program are
  accepted (``member_kind``), and the sample inputs, which every archive holds, are dropped unread;
- the graph JSON names the ATen operators to call (``aten.from_file`` reads a file of the loading
  machine): every node's target must be in ``pt2_ops.PURE_OPS`` (or an in-place activation in ``INPLACE_OPS``
  on a value the program made itself), and no higher-order op, custom object or non-CPU device appears;
- symbolic shapes (``expr_str``) are parsed by ``sympy.sympify``, which ``eval``s its string: each one
  must match a small arithmetic grammar (``check_expr``);
- ``guards_code`` is Python source that ``ExportedProgram.module()`` ``exec``s, and ``verifiers`` names
  the checker torch applies: ``canonical_program`` empties the first and sets the second itself.

Python's ``zipfile`` and torch's miniz reader can disagree about a crafted zip (duplicate names, local
versus central headers), so the worker never hands the user's file to torch: ``rebuild_archive`` writes
a new archive from the members ``zipfile`` read and checked, and checks that file again.

Example:
    >>> from modelpress.optimize.sources.pt2_archive import member_kind
    >>> member_kind("models/model.json"), member_kind("data/aotinductor/model/x.wrapper.so")
    ('program', None)
"""

from __future__ import annotations

import copy
import json
import keyword
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelpress.errors import ModelLoadError
from modelpress.optimize.sources.pt2_ops import (
    SYMBOL,
    INPLACE_OPS,
    MUST_BE_FALSE,
    VIEW_OPS,
    check_expr,
    short_op,
    target_allowed,
)

MAX_PT2_BYTES = 4 * 1024**3
MAX_JSON_BYTES = 64 * 1024**2   # model.json of a BERT-base export is ~2 MB
MAX_SMALL_BYTES = 64            # archive_format, archive_version, byteorder, .data/version, serialization_id
MAX_MEMBERS = 200_000
MAX_RATIO = 100  # unpacked / packed size of a deflated member: torch writes them stored (1x); bombs reach ~1000x
REBUILT_TOP = "archive"

# ----------------------------------------------------------------------------- program fields
# Argument kinds a node may take (torch/_export/serde/schema.py ``Argument``). Not: ``as_graph`` (a
# higher-order op's subgraph), ``as_custom_obj`` (a pickled script object), ``as_operator``.
_ARG_KINDS = frozenset("""as_none as_tensor as_tensors as_optional_tensor as_optional_tensors as_int as_ints
as_float as_floats as_bool as_bools as_string as_strings as_sym_int as_sym_ints as_sym_float as_sym_floats
as_sym_bool as_sym_bools as_scalar_type as_memory_format as_layout as_device as_complex""".split())
_FORBIDDEN_KEYS = {"as_graph": "a higher-order operator's subgraph", "as_custom_obj": "a pickled custom object",
                   "as_operator": "an operator passed as a value", "custom_obj_values": "pickled custom objects"}
_INPUT_SPECS = frozenset({"user_input", "parameter", "buffer", "tensor_constant"})
_PROGRAM_KEYS = frozenset({"graph_module", "opset_version", "range_constraints", "schema_version", "verifiers",
                           "torch_version", "guards_code"})
# torch's own two dialects; the file's choice is replaced anyway (``canonical_program``).
_VERIFIERS = frozenset({"", "ATEN", "TRAINING"})
# Node metadata that torch deserializes by splitting strings; the rest (``source_fn_stack`` resolves names
# through getattr on torch, ``custom``, ``from_node``) is debugging information and is dropped.
_META_KEYS = frozenset({"stack_trace", "nn_module_stack", "torch_fn"})
_TREESPEC_TYPES = frozenset({None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"})

_FQN_PART = re.compile(r"(?!__)[A-Za-z0-9_\-]{1,200}")  # no quote or backslash: FX writes getattr(self, "part")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")
# Keys whose string values become Python names (FX writes them into generated source) or attribute paths.
_NAME_KEYS = frozenset({"name", "as_name"})
_PATH_KEYS = frozenset({"parameter_name", "buffer_name", "tensor_constant_name", "fqn"})


# ----------------------------------------------------------------------------- members
_WEIGHT = re.compile(r"weight_\d{1,9}")
_CONSTANT = re.compile(r"tensor_\d{1,9}")
_SMALL_FILES = {"archive_format": re.compile(r"pt2"), "archive_version": re.compile(r"0"),
                "byteorder": re.compile(r"little"), ".data/version": re.compile(r"\d{1,3}\n?"),
                ".data/serialization_id": re.compile(r"\d{1,64}")}
_WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
_CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
_PROGRAM = "models/model.json"
_SAMPLE_INPUTS = "data/sample_inputs/model.pt"


def member_kind(rel: str) -> str | None:
    """What ``torch.export.save`` writes at ``rel`` (the name inside the top folder), or None if nothing.

    Example:
        >>> member_kind("data/weights/weight_3"), member_kind("data/aotinductor/model/x.wrapper.so")
        ('weight', None)
    """
    if rel == _PROGRAM:
        return "program"
    if rel in (_WEIGHTS_CONFIG, _CONSTANTS_CONFIG):
        return "config"
    if rel == _SAMPLE_INPUTS:
        return "sample_inputs"
    if rel in _SMALL_FILES:
        return "small"
    folder, _, leaf = rel.rpartition("/")
    if folder == "data/weights" and _WEIGHT.fullmatch(leaf):
        return "weight"
    if folder == "data/constants" and _CONSTANT.fullmatch(leaf):
        return "constant"
    return None


def _why_not(rel: str) -> str:
    """A person's reason for a refused member: what torch would have done with it."""
    low = rel.lower()
    if low.startswith("data/aotinductor/"):
        return "AOTInductor-compiled code, which torch would load as a native library"
    if low.endswith((".so", ".dll", ".dylib")) or ".so." in low:
        return "a shared library (native code)"
    if "custom_obj" in low or "opaque_obj" in low:
        return "a pickled object, which torch would unpickle"
    if low.endswith((".pt", ".pth", ".pkl", ".pickle")) or low.startswith("serialized_"):
        return "a pickled payload (legacy format), which torch would unpickle"
    if rel.endswith("/"):
        return "a folder entry, which torch.export.save never writes"
    return "not a file torch.export.save writes for a CPU program"


def _unsafe_name(name: str) -> str | None:
    if not name or "\x00" in name:
        return "an empty name or one with a NUL byte"
    if "\\" in name:
        return "a backslash in the name"
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "an absolute path"
    if any(part in ("..", ".") for part in name.split("/")):
        return "a '..' or '.' path component"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "a control character in the name"
    if "//" in name.rstrip("/"):
        return "an empty path component"
    return None


def _refuse(name: str, what: str) -> ModelLoadError:
    return ModelLoadError(f"exported program {name}: {what}")


@dataclass
class Archive:
    """A checked archive: its top folder, members by name inside it, the parsed program and configs."""

    top: str
    members: dict[str, zipfile.ZipInfo]
    program: dict[str, Any]
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    input_names: list[str] = field(default_factory=list)
    inplace_nodes: list[str] = field(default_factory=list)


def read_archive(path: str | Path, *, max_bytes: int = MAX_PT2_BYTES, label: str | None = None) -> Archive:
    """Open ``path`` with Python's zipfile and check every member and the program; raise ``ModelLoadError``.

    ``label`` names the file in messages (default: its file name).

    Example:
        >>> read_archive("ranker.pt2").input_names  # doctest: +SKIP
        ['features']
    """
    p = Path(path)
    name = label or p.name
    if not p.is_file():
        raise ModelLoadError(f"exported program {p} does not exist")
    size = p.stat().st_size
    if size > max_bytes:
        raise _refuse(name, f"the file is {size} bytes, over the limit of {max_bytes} bytes "
                            "(MODELPRESS_MAX_WEIGHTS_BYTES)")
    try:
        with zipfile.ZipFile(p) as zf:
            return _read(zf, name, max_bytes)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError, RuntimeError,
            UnicodeDecodeError) as e:
        raise _refuse(name, f"not a readable .pt2 archive ({type(e).__name__}: {str(e)[:200]}); "
                            "write it with torch.export.save") from None
    except (TypeError, AttributeError, KeyError, IndexError, ValueError, RecursionError) as e:
        # A field of the wrong type or shape deep in the JSON: the file's fault, told in one line.
        raise _refuse(name, f"the program's JSON is not what torch.export.save writes ({type(e).__name__}: "
                            f"{str(e)[:120]})") from None


def _read(zf: zipfile.ZipFile, name: str, max_bytes: int) -> Archive:
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise _refuse(name, f"{len(infos)} archive members, more than the {MAX_MEMBERS} accepted")
    seen: set[str] = set()
    tops: set[str] = set()
    total = 0
    for i in infos:
        n = i.filename
        if n in seen:
            # zipfile reads the last copy, torch's reader may read the first: refuse rather than guess.
            raise _refuse(name, f"archive member {n!r} appears twice; a zip written by torch.export.save "
                                "holds each name once: write the program with it again")
        seen.add(n)
        why = _unsafe_name(n)
        if why:
            raise _refuse(name, f"archive member {n!r} has an unsafe name ({why}); write the program with "
                                "torch.export.save")
        if stat.S_ISLNK(i.external_attr >> 16):
            raise _refuse(name, f"archive member {n!r} is a symbolic link, which torch.export.save never writes")
        if i.flag_bits & 0x1:
            raise _refuse(name, f"archive member {n!r} is encrypted")
        if "/" not in n:
            raise _refuse(name, f"archive member {n!r} is outside the archive's top folder")
        tops.add(n.split("/", 1)[0])
        if i.file_size > max_bytes:
            raise _refuse(name, f"archive member {n!r} unpacks to {i.file_size} bytes, over the limit of "
                                f"{max_bytes} bytes")
        if i.compress_type == zipfile.ZIP_STORED and i.compress_size != i.file_size:
            raise _refuse(name, f"archive member {n!r} declares {i.file_size} bytes but stores {i.compress_size}")
        if i.compress_type != zipfile.ZIP_STORED and i.file_size > MAX_RATIO * max(i.compress_size, 1) + 1024:
            raise _refuse(name, f"archive member {n!r} unpacks {i.file_size // max(i.compress_size, 1)}x "
                                "its packed size (a zip bomb?)")
        total += i.file_size
    if total > max_bytes:
        raise _refuse(name, f"the archive unpacks to {total} bytes, over the limit of {max_bytes} bytes "
                            "(MODELPRESS_MAX_WEIGHTS_BYTES)")
    if len(tops) != 1:
        raise _refuse(name, f"archive members are in {len(tops)} top folders ({', '.join(sorted(tops)[:3])}); "
                            "torch.export.save writes one")
    top = tops.pop()
    members = {i.filename[len(top) + 1:]: i for i in infos}
    unknown = [rel for rel in members if member_kind(rel) is None]
    for rel in (_PROGRAM, _WEIGHTS_CONFIG, _CONSTANTS_CONFIG, "archive_version"):
        if rel not in members:
            raise _refuse(name, f"{top}/{rel} is missing: not a program written by torch.export.save")
    for rel, pattern in _SMALL_FILES.items():
        if rel in members:
            raw = _read_small(zf, members[rel], MAX_SMALL_BYTES, name)
            if not pattern.fullmatch(raw):
                raise _refuse(name, f"{top}/{rel} holds {raw[:40]!r}, not what torch.export.save writes")
    configs = {rel: _read_json(zf, members[rel], name) for rel in (_WEIGHTS_CONFIG, _CONSTANTS_CONFIG)}
    program = _read_json(zf, members[_PROGRAM], name)
    arc = Archive(top=top, members=members, program=program, configs=configs)
    _check_payloads(arc, name)  # first: "a pickled weight" says more than "an unknown member" would
    if unknown:
        raise _refuse(name, f"archive member {top + '/' + unknown[0]!r} is {_why_not(unknown[0])}; modelpress reads "
                            "only the graph, plain tensors and their configs that torch.export.save writes for a "
                            "CPU program (no AOTInductor package, pickles or extra files)")
    arc.inplace_nodes = check_program(program, name)
    arc.input_names = program_inputs(program)
    return arc


def _read_small(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, name: str) -> str:
    if info.file_size > limit:
        raise _refuse(name, f"archive member {info.filename!r} is {info.file_size} bytes, over {limit}")
    return zf.read(info).decode("utf-8")


def _read_json(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> dict[str, Any]:
    try:
        value = json.loads(_read_small(zf, info, MAX_JSON_BYTES, name))
    except (ValueError, RecursionError) as e:
        raise _refuse(name, f"{info.filename} is not valid JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(value, dict):
        raise _refuse(name, f"{info.filename} is not a JSON object")
    return value


def _check_tensor_meta(meta: Any, where: str, name: str) -> None:
    if not isinstance(meta, dict):
        raise _refuse(name, f"{where} has no tensor description (tensor_meta)")
    device = meta.get("device")
    if not isinstance(device, dict) or device.get("type") != "cpu":
        raise _refuse(name, f"{where} is on device {device!r}; export the program on CPU")
    if meta.get("layout") != 7:  # schema.Layout.Strided: sparse and other layouts load through other paths
        raise _refuse(name, f"{where} is not a dense (strided) tensor")
    for key in ("sizes", "strides"):
        if not isinstance(meta.get(key), list) or not all(isinstance(s, dict) and set(s) == {"as_int"}
                                                          and type(s["as_int"]) is int for s in meta[key]):
            raise _refuse(name, f"{where}: {key} are not plain integers")
    offset = meta.get("storage_offset")
    if not (isinstance(offset, dict) and set(offset) == {"as_int"} and type(offset["as_int"]) is int):
        raise _refuse(name, f"{where}: storage_offset is not a plain integer")


def _check_payloads(arc: Archive, name: str) -> None:
    """Every weight and constant is a plain tensor file named in its config, and every such file is used."""
    used: set[str] = set()
    for rel, folder, pattern, what in ((_WEIGHTS_CONFIG, "data/weights", _WEIGHT, "weight"),
                                       (_CONSTANTS_CONFIG, "data/constants", _CONSTANT, "constant")):
        entries = arc.configs[rel].get("config")
        if set(arc.configs[rel]) != {"config"} or not isinstance(entries, dict):
            raise _refuse(name, f"{arc.top}/{rel} is not a torch.export.save payload config")
        for fqn, meta in entries.items():
            where = f"{what} {str(fqn)[:80]!r} ({arc.top}/{rel})"
            if not isinstance(meta, dict):
                raise _refuse(name, f"{where} is not described by an object")
            if meta.get("use_pickle") is not False:
                raise _refuse(name, f"{where} is stored as a pickled object ({str(meta.get('path_name'))[:40]}), "
                                    "which modelpress never unpickles (it could run code); only plain tensors are "
                                    "accepted in an exported program")
            path_name = meta.get("path_name")
            if not isinstance(path_name, str) or not pattern.fullmatch(path_name):
                why = ("a pickled object, which modelpress never unpickles"
                       if isinstance(path_name, str) and path_name.startswith(("custom_obj", "opaque_obj"))
                       else "not a plain tensor file")
                raise _refuse(name, f"{where} is stored as {str(path_name)[:60]!r}: {why}")
            if f"{folder}/{path_name}" not in arc.members:
                raise _refuse(name, f"{where} names {folder}/{path_name}, which the archive does not hold")
            if not all(_FQN_PART.fullmatch(part) for part in str(fqn).split(".")):
                raise _refuse(name, f"{where} is not a plain attribute path")
            _check_tensor_meta(meta.get("tensor_meta"), where, name)
            used.add(f"{folder}/{path_name}")
    unused = sorted(rel for rel, kind in ((r, member_kind(r)) for r in arc.members)
                    if kind in ("weight", "constant") and rel not in used)
    if unused:
        raise _refuse(name, f"archive member {arc.top}/{unused[0]} is not named by any payload config")


# ----------------------------------------------------------------------------- the program JSON
def _walk(value: Any, name: str, where: str = "") -> None:
    """Fields that anywhere in the program would run code or load objects: symbolic expressions, subgraphs,
    custom objects, devices."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k in _FORBIDDEN_KEYS and v not in ({}, [], None):
                raise _refuse(name, f"the program holds {_FORBIDDEN_KEYS[k]} ({k} at {where or 'top'}), which "
                                    "modelpress does not load")
            if k == "expr_str":
                why = check_expr(v)
                if why:
                    raise _refuse(name, f"symbolic size {str(v)[:60]!r} at {where} is not a plain size "
                                        f"expression ({why}); torch would evaluate it as Python")
            if k in ("as_device", "device") and isinstance(v, dict) and v.get("type") != "cpu":
                raise _refuse(name, f"the program uses device {v.get('type')!r} at {where}; export it on CPU")
            if k in _NAME_KEYS and isinstance(v, str) and not _is_ident(v):
                raise _refuse(name, f"name {v[:60]!r} at {where} is not a plain Python name")
            if k in _PATH_KEYS and isinstance(v, str) and v and not all(_FQN_PART.fullmatch(x) for x in v.split(".")):
                raise _refuse(name, f"attribute path {v[:60]!r} at {where} is not a plain attribute path")
            if k == "forward_arg_names" and not (isinstance(v, list) and all(_is_ident(x) for x in v)):
                raise _refuse(name, f"argument names {str(v)[:60]} at {where} are not plain Python names")
            if k.endswith("_values") and isinstance(v, dict) and not all(_is_ident(x) for x in v):
                raise _refuse(name, f"a value name in {where or 'top'}.{k} is not a plain Python name")
            _walk(v, name, f"{where}.{k}" if where else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _walk(v, name, f"{where}[{i}]")


def _is_ident(v: Any) -> bool:
    return isinstance(v, str) and bool(_IDENT.fullmatch(v)) and not keyword.iskeyword(v)


def _tensor_names(arg: Any) -> list[str]:
    """Tensor value names an argument or output refers to."""
    out: list[str] = []
    if isinstance(arg, dict):
        if isinstance(arg.get("as_tensor"), dict):
            out.append(str(arg["as_tensor"].get("name")))
        for key in ("as_tensors", "as_optional_tensors"):
            for t in arg.get(key) or []:
                out += [str(t["name"])] if isinstance(t, dict) and "name" in t else _tensor_names(t)
        if isinstance(arg.get("as_optional_tensor"), dict):
            out += _tensor_names(arg["as_optional_tensor"])
    return out


def _node_arg(node: dict[str, Any], arg_name: str) -> Any:
    for inp in node.get("inputs") or []:
        if isinstance(inp, dict) and inp.get("name") == arg_name:
            return inp.get("arg")
    return None


def check_program(program: dict[str, Any], name: str) -> list[str]:
    """Raise ``ModelLoadError`` unless the program JSON holds only allow-listed operators and fields.

    Returns the names of its (allowed) in-place nodes: they decide which torch verifier loads it.

    Example:
        >>> check_program(json.load(open("model.json")), "ranker.pt2")  # doctest: +SKIP
        []
    """
    unknown = sorted(set(program) - _PROGRAM_KEYS)
    if unknown:
        raise _refuse(name, f"the program has fields {', '.join(unknown[:3])} that torch 2.13's "
                            "torch.export.save does not write")
    verifiers = program.get("verifiers", [])
    if not isinstance(verifiers, list) or not all(isinstance(v, str) and v in _VERIFIERS for v in verifiers):
        raise _refuse(name, f"the program names verifier(s) {str(verifiers)[:80]}; modelpress accepts only "
                            "torch's own ATEN or TRAINING dialects and re-checks with the functional one")
    gm = program.get("graph_module")
    graph = gm.get("graph") if isinstance(gm, dict) else None
    sig = gm.get("signature") if isinstance(gm, dict) else None
    if not isinstance(graph, dict) or not isinstance(sig, dict) or not isinstance(graph.get("nodes"), list):
        raise _refuse(name, "the program has no graph (graph_module.graph.nodes); write it with torch.export.save")
    _walk(program, name)
    if gm.get("treespec_namedtuple_fields"):
        raise _refuse(name, "the program's inputs or outputs are named tuples; give it tensors in and one tensor out")
    for entry in gm.get("module_call_graph") or []:
        spec_sig = entry.get("signature") if isinstance(entry, dict) else None
        for key in ("in_spec", "out_spec"):
            text = spec_sig.get(key) if isinstance(spec_sig, dict) else None
            if text is not None:
                types = set(re.findall(r'"type":\s*(?:"([^"]*)"|null)', str(text)))
                bad = {t or None for t in types} - _TREESPEC_TYPES
                if bad:
                    raise _refuse(name, f"the program's {key} uses container type {sorted(map(str, bad))[0]!r}; "
                                        "give it tensors in and one tensor out")
    for k in program.get("range_constraints") or {}:
        if not SYMBOL.fullmatch(str(k)):
            raise _refuse(name, f"range constraint {str(k)[:40]!r} is not a size symbol")
    rooted: set[str] = set()  # inputs, weights, buffers, constants, and views of them
    for spec in sig.get("input_specs") or []:
        kind = next(iter(spec), None) if isinstance(spec, dict) and len(spec) == 1 else None
        if kind not in _INPUT_SPECS:
            raise _refuse(name, f"the program takes an input of kind {kind!r}; modelpress accepts tensors, "
                                "parameters, buffers and tensor constants")
        body = spec[kind]
        arg = body.get("arg") if isinstance(body, dict) else None
        rooted.update(_tensor_names(arg) if kind == "user_input" else [str((arg or {}).get("name"))])
        target = body.get("parameter_name") or body.get("buffer_name") or body.get("tensor_constant_name")
        if kind != "user_input" and not all(_FQN_PART.fullmatch(part) for part in str(target).split(".")):
            raise _refuse(name, f"{kind} {str(target)[:80]!r} is not a plain attribute path")
    for spec in sig.get("output_specs") or []:
        kind = next(iter(spec), None) if isinstance(spec, dict) and len(spec) == 1 else None
        if kind != "user_output":
            raise _refuse(name, f"the program's output {kind!r} changes an input, weight or buffer (or is not a "
                                "plain output); modelpress only runs programs that leave them unchanged")
    for inp in graph.get("inputs") or []:
        rooted.update(_tensor_names(inp))
    inplace: list[str] = []
    for node in graph["nodes"]:
        if not isinstance(node, dict):
            raise _refuse(name, "a graph node is not an object")
        target, label = node.get("target"), str(node.get("name") or "?")[:60]
        if not target_allowed(target):
            raise _refuse(name, f"node {label!r} calls {short_op(target)}, which is not one of the pure tensor "
                                "operators modelpress runs (it could read files or run other code); export a model "
                                "built from standard torch.nn layers and tensor functions")
        for inp in node.get("inputs") or []:
            arg = inp.get("arg") if isinstance(inp, dict) else None
            kinds = list(arg) if isinstance(arg, dict) else [None]
            if len(kinds) != 1 or kinds[0] not in _ARG_KINDS:
                raise _refuse(name, f"node {label!r} ({short_op(target)}) takes an argument of kind "
                                    f"{kinds[0]!r}, which modelpress does not load")
        flag = MUST_BE_FALSE.get(target)
        if flag and _node_arg(node, flag) != {"as_bool": False}:
            raise _refuse(name, f"node {label!r} runs {short_op(target)} in training mode ({flag}=True); "
                                "export the model after model.eval()")
        args = [t for inp in node.get("inputs") or [] if isinstance(inp, dict) for t in _tensor_names(inp.get("arg"))]
        outs = [t for out in node.get("outputs") or [] for t in _tensor_names(out)]
        if target in INPLACE_OPS:
            changed = _tensor_names(_node_arg(node, "self")) or args[:1]
            if not changed or changed[0] in rooted:
                raise _refuse(name, f"node {label!r} changes {(changed or ['?'])[0]!r}, an input, weight or "
                                    f"buffer of the program (or a view of one), in place ({short_op(target)}); "
                                    "modelpress only runs programs that leave them unchanged")
            inplace.append(label)
        # A view or an in-place result shares memory with its first tensor argument (``self``) only.
        if (target in VIEW_OPS or target in INPLACE_OPS) and args[:1] and args[0] in rooted:
            rooted.update(outs)
    return inplace


def program_inputs(program: dict[str, Any]) -> list[str]:
    """The user inputs' names in order (the exported forward's arguments), from the program JSON.

    Example:
        >>> program_inputs({"graph_module": {"signature": {"input_specs": [
        ...     {"user_input": {"arg": {"as_tensor": {"name": "features"}}}}]}}})
        ['features']
    """
    try:
        specs = program["graph_module"]["signature"]["input_specs"]
        return [s["user_input"]["arg"]["as_tensor"]["name"] for s in specs if "user_input" in s]
    except (KeyError, TypeError):
        return []


def canonical_program(program: dict[str, Any], *, inplace: bool) -> dict[str, Any]:
    """The program as modelpress hands it to torch: what could run code or pick a laxer check removed.

    ``verifiers`` becomes torch's default functional ``ATEN`` dialect, or ``TRAINING`` when the program
    holds allow-listed in-place nodes (the one thing that dialect allows besides; the worker still
    re-checks the functionalized program with the default verifier). ``guards_code`` (Python that
    ``module()`` would ``exec``) is emptied, node metadata is kept only where torch merely splits strings.

    Example:
        >>> doc = {"verifiers": ["TRAINING"], "guards_code": ["__import__('os')"],
        ...        "graph_module": {"graph": {"nodes": [{"metadata": {"custom": "{}", "stack_trace": "x"}}]}}}
        >>> out = canonical_program(doc, inplace=False)
        >>> out["verifiers"], out["guards_code"], out["graph_module"]["graph"]["nodes"][0]["metadata"]
        (['ATEN'], [], {'stack_trace': 'x'})
    """
    out = copy.deepcopy(program)
    out["verifiers"] = ["TRAINING"] if inplace else ["ATEN"]
    out["guards_code"] = []
    gm = out["graph_module"]
    def kept(meta: Any) -> dict[str, str]:
        items = meta.items() if isinstance(meta, dict) else ()
        return {k: v for k, v in items if k in _META_KEYS and isinstance(v, str)}

    gm["metadata"] = kept(gm.get("metadata"))
    for node in gm["graph"]["nodes"]:
        node["metadata"] = kept(node.get("metadata"))
    return out


def check_archive(path: str | Path, *, max_bytes: int = MAX_PT2_BYTES, label: str | None = None,
                  verify_data: bool = False) -> list[str]:
    """Check a ``.pt2`` without torch; return the program's input names (``ModelLoadError`` when refused).

    ``verify_data`` also reads every member against its checksum (submit does, so that a corrupt upload
    is refused before it is staged; the worker reads every byte when it rebuilds the archive anyway).

    Example:
        >>> check_archive("ranker.pt2")  # doctest: +SKIP
        ['features']
    """
    arc = read_archive(path, max_bytes=max_bytes, label=label)
    if verify_data:
        name = label or Path(path).name
        try:
            with zipfile.ZipFile(path) as zf:
                broken = zf.testzip()
        except (zipfile.BadZipFile, EOFError, OSError, RuntimeError) as e:
            raise _refuse(name, f"not a readable .pt2 archive ({type(e).__name__}: {str(e)[:200]})") from None
        if broken is not None:
            raise _refuse(name, f"archive member {broken!r} fails its checksum: the file is corrupt")
    return arc.input_names


def rebuild_archive(path: str | Path, dest: str | Path, *, max_bytes: int = MAX_PT2_BYTES,
                    label: str | None = None) -> Archive:
    """Write to ``dest`` a new archive of the checked members of ``path``, then check ``dest`` again.

    The copy holds the canonical program (``canonical_program``), the payload configs and tensor files as
    read by Python's zipfile, torch's version files, and an *empty* sample-inputs file: torch reads the
    original one with a ``weights_only=False`` retry, and an empty one makes it skip it. Returns the
    checked copy.

    Example:
        >>> rebuild_archive("upload.pt2", "/tmp/private/program.pt2").top  # doctest: +SKIP
        'archive'
    """
    name = label or Path(path).name
    arc = read_archive(path, max_bytes=max_bytes, label=name)
    program = canonical_program(arc.program, inplace=bool(arc.inplace_nodes))
    try:
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as out:
            # torch's version files, as torch.export.save writes them (the originals were only checked).
            for rel, text in (("archive_format", "pt2"), ("archive_version", "0"), ("byteorder", "little"),
                              (".data/version", "6\n")):
                out.writestr(f"{REBUILT_TOP}/{rel}", text)
            out.writestr(f"{REBUILT_TOP}/{_PROGRAM}", json.dumps(program))
            for rel in (_WEIGHTS_CONFIG, _CONSTANTS_CONFIG):
                out.writestr(f"{REBUILT_TOP}/{rel}", json.dumps(arc.configs[rel]))
            for rel in sorted(arc.members):
                if member_kind(rel) in ("weight", "constant"):
                    with src.open(arc.members[rel]) as fin, out.open(f"{REBUILT_TOP}/{rel}", "w",
                                                                    force_zip64=True) as fout:
                        shutil.copyfileobj(fin, fout, 1 << 20)
            out.writestr(f"{REBUILT_TOP}/{_SAMPLE_INPUTS}", b"")
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError) as e:
        raise _refuse(name, f"not a readable .pt2 archive ({type(e).__name__}: {str(e)[:200]})") from None
    again = read_archive(dest, max_bytes=max_bytes + 2 * MAX_JSON_BYTES, label=name)
    if json.dumps(again.program) != json.dumps(program) or again.inplace_nodes != arc.inplace_nodes:
        raise _refuse(name, "the rebuilt archive does not read back as written")  # a bug, not the file's fault
    return again


__all__ = ["Archive", "MAX_PT2_BYTES", "canonical_program", "check_archive", "check_program", "member_kind",
           "program_inputs", "read_archive", "rebuild_archive"]

"""``.pt2`` archives: what torch.export.save writes passes and loads; what could run code never reaches torch.

The hostile archives are made from a real ``torch.export.save`` archive by the builders below (also used
by tests/bad_input/test_hostile_pt2.py). Control tests show that the payloads do run when torch itself
loads the file, so their absence through modelpress means something.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

from modelpress.errors import ModelLoadError
from modelpress.optimize.sources.pt2_archive import check_archive, check_program, read_archive, rebuild_archive
from modelpress.optimize.sources.pt2_ops import INPLACE_OPS, PURE_OPS, SYM_OPS, VIEW_OPS, check_expr

# ----------------------------------------------------------------------------- builders


class Small(nn.Module):
    """A two-layer classifier (8 → 16 → 3): its archive is ~12 KB, under every size limit in the tests."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(features)))


def export_small(path: Path, *, seed: int = 0) -> Path:
    """``torch.export.save`` of ``Small`` with a dynamic batch, as a user writes it."""
    torch.manual_seed(seed)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(Small().eval(), (torch.randn(2, 8),), dynamic_shapes={"features": {0: batch}})
    torch.export.save(program, str(path))
    return path


def small_data(path: Path, *, seed: int = 0) -> Path:
    """Eval tensors for ``Small``, named after its forward argument, with labels."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    save_file({"features": torch.randn(64, 8, generator=g), "labels": torch.randint(0, 3, (64,), generator=g)},
              str(path))
    return path


def rewrite(good: Path, out: Path, *, program: Callable[[dict], None] | None = None,
            constants: Callable[[dict], None] | None = None, add: tuple[tuple[str, bytes], ...] | list = ()) -> Path:
    """Copy a real archive, editing its program JSON / constants config in place and adding members."""
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(out, "w") as zout, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names some cases want
        top = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("models/model.json") and program:
                doc = json.loads(data)
                program(doc)
                data = json.dumps(doc).encode()
            if info.filename.endswith("model_constants_config.json") and constants:
                doc = json.loads(data)
                constants(doc)
                data = json.dumps(doc).encode()
            zout.writestr(info.filename, data)
        for name, data in add:
            zout.writestr(name.replace("{top}", top), data)
    return out


def _node(doc: dict, target: str) -> dict:
    return next(n for n in doc["graph_module"]["graph"]["nodes"] if n["target"] == target)


def shared_library(path: Path, marker: Path) -> Path:
    """A real shared library whose constructor writes ``marker`` as soon as it is loaded (gcc)."""
    src = path.with_suffix(".c")
    src.write_text('#include <stdio.h>\n__attribute__((constructor)) static void mark(void) {\n'
                   f'    FILE *f = fopen({json.dumps(str(marker))}, "w");\n'
                   '    if (f) { fputs("the library ran\\n", f); fclose(f); }\n}\n')
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(path), str(src)], check=True, timeout=120)
    return path


class _CreatesFile:
    """Unpickling this creates a file: what a pickled constant could do."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


def _from_file(marker: Path) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        # The relu becomes a call that maps (and with shared=True creates) a file of the loading machine.
        node = _node(doc, "torch.ops.aten.relu.default")
        node["target"] = "torch.ops.aten.from_file.default"
        node["inputs"] = [{"name": "filename", "arg": {"as_string": str(marker)}, "kind": 1},
                          {"name": "shared", "arg": {"as_bool": True}, "kind": 1},
                          {"name": "size", "arg": {"as_int": 16}, "kind": 1}]
    return edit


def _weight_changed_in_place(doc: dict) -> None:
    # torch's TRAINING verifier allows non-functional ops: the file asks for it and adds 1 to a weight
    # (through the relu node) each time the model runs.
    doc["verifiers"] = ["TRAINING"]
    node = _node(doc, "torch.ops.aten.relu.default")
    node["target"] = "torch.ops.aten.add_.Scalar"
    node["inputs"] = [{"name": "self", "arg": {"as_tensor": {"name": "p_fc1_weight"}}, "kind": 1},
                      {"name": "other", "arg": {"as_float": 1.0}, "kind": 1},
                      {"name": "alpha", "arg": {"as_int": 1}, "kind": 1}]


def _opaque_constant(doc: dict) -> None:
    doc["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                             "tensor_meta": None}


def hostile_archives(root: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    """Case → (archive, what the refusal must name). Each would make torch run something (see the controls)."""
    root.mkdir(parents=True, exist_ok=True)
    good = export_small(root / "good.pt2")
    lib = shared_library(root / "x.wrapper.so", marker).read_bytes()
    meta = json.dumps({"AOTI_DEVICE_KEY": "cpu"}).encode()
    return {
        "an AOTInductor shared library": (rewrite(good, root / "aoti.pt2", add=[
            ("{top}/data/aotinductor/model/x.wrapper.so", lib),
            ("{top}/data/aotinductor/model/x.wrapper_metadata.json", meta),
            ("{top}/data/aotinductor/model/x_metadata.json", meta)]), "data/aotinductor/model/x.wrapper.so"),
        "a node calling aten.from_file": (rewrite(good, root / "from-file.pt2", program=_from_file(marker)),
                                          "aten.from_file.default"),
        "a non-functional verifier changing a weight": (
            rewrite(good, root / "training.pt2", program=_weight_changed_in_place), "p_fc1_weight"),
        # The first model.json calls from_file, the second is harmless: readers that pick different copies
        # would check one and load the other.
        "duplicate member names": (rewrite(good, root / "dup.pt2", program=_from_file(marker), add=[
            ("{top}/models/model.json", _read(good, "models/model.json"))]), "appears twice"),
        "an opaque_obj constant": (rewrite(good, root / "opaque.pt2", constants=_opaque_constant, add=[
            ("{top}/data/constants/opaque_obj_0", pickle.dumps(_CreatesFile(marker)))]), "opaque_obj_0"),
        "a path-traversal member name": (rewrite(good, root / "traversal.pt2", add=[
            ("{top}/data/weights/../../../../tmp/evil.so", lib)]), "../"),
    }


def _read(archive: Path, rel: str) -> bytes:
    with zipfile.ZipFile(archive) as zf:
        top = zf.namelist()[0].split("/")[0]
        return zf.read(f"{top}/{rel}")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_small(tmp_path_factory.mktemp("small") / "small.pt2")


# ----------------------------------------------------------------------------- what torch writes passes


class _CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class _Residual(nn.Module):
    """ResNet's pattern: ``relu(inplace=True)`` and ``out += identity`` stay in-place in export's IR."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        out += x
        return self.act(out).mean((2, 3))


class _Buffers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("scale", torch.full((4,), 2.0))
        self.offset = torch.arange(4.0)  # a plain tensor attribute: a lifted constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x * self.scale) + self.offset


class _TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc(x)
        return h + y, h.softmax(-1)


@pytest.mark.parametrize("case", ["mlp", "cnn", "residual", "buffers", "two outputs"])
def test_archives_torch_export_save_writes_pass_load_and_compute_what_the_module_does(case, tmp_path):
    from modelpress.optimize.sources.export import load_program

    torch.manual_seed(0)
    module, args = {"mlp": (Small(), (torch.randn(2, 8),)), "cnn": (_CNN(), (torch.randn(2, 1, 8, 8),)),
                    "residual": (_Residual(), (torch.randn(2, 2, 6, 6),)),
                    "buffers": (_Buffers(), (torch.randn(2, 4),)),
                    "two outputs": (_TwoOutputs(), (torch.randn(2, 4), torch.randn(2, 4)))}[case]
    module.eval()
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(module, args), str(path))
    with zipfile.ZipFile(path) as zf:
        members = {n.split("/", 1)[1] for n in zf.namelist()}
    # The layout the member allow-list was made from (torch 2.13): every one is accepted, nothing else is.
    assert {"models/model.json", "data/weights/model_weights_config.json",
            "data/constants/model_constants_config.json", "data/sample_inputs/model.pt", "archive_format",
            "archive_version", "byteorder", ".data/version", ".data/serialization_id"} <= members
    assert all(m.startswith(("data/weights/weight_", "data/constants/tensor_")) for m in members
               if m.count("/") == 2 and not m.endswith(".json") and "sample_inputs" not in m)
    expected_names = ["features"] if case == "mlp" else (["x", "y"] if case == "two outputs" else ["x"])
    assert check_archive(path) == expected_names
    program = load_program(path)
    with torch.no_grad():
        got, want = program.module()(*args), module(*args)
    for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        assert torch.equal(a, b)
    assert (program.verifier.dialect == "TRAINING") == (case == "residual")  # only in-place programs


def test_every_archive_holds_pickled_sample_inputs_which_torch_never_gets(small, tmp_path):
    from modelpress.optimize.sources.export import load_program

    # Verified on torch 2.13: torch.export.save always writes the example inputs as a pickle ...
    assert _read(small, "data/sample_inputs/model.pt")[:2] == b"PK"  # a torch.save zip (pickle inside)
    # ... which torch.export.load would read with a weights_only=False retry. The rebuilt copy holds an
    # empty file instead, which torch skips: the loaded program has no example inputs.
    rebuilt = rebuild_archive(small, tmp_path / "rebuilt.pt2")
    assert rebuilt.members["data/sample_inputs/model.pt"].file_size == 0
    assert load_program(small).example_inputs is None


def test_torch_reads_a_private_rebuilt_copy_never_the_users_file(small, monkeypatch):
    from modelpress.optimize.sources import export

    seen: list[tuple[str, int, dict]] = []
    real = torch.export.load

    def spy(f, *a, **kw):  # type: ignore[no-untyped-def]
        program = json.loads(_read(Path(f), "models/model.json"))
        seen.append((str(f), stat.S_IMODE(os.stat(Path(f).parent).st_mode), program))
        return real(f, *a, **kw)

    monkeypatch.setattr(torch.export, "load", spy)
    export.load_program(small)
    ((path, mode, program),) = seen
    assert path != str(small) and mode == 0o700
    assert program["verifiers"] == ["ATEN"] and program["guards_code"] == []
    assert not Path(path).exists()  # removed once loaded


# ----------------------------------------------------------------------------- hostile archives


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, tuple[Path, str]], Path]:
    root = tmp_path_factory.mktemp("hostile")
    marker = root / "PAYLOAD-RAN"
    return hostile_archives(root / "archives", marker), marker


def test_each_hostile_archive_is_refused_naming_what_it_holds_and_nothing_runs(hostile):
    from modelpress.optimize.sources.export import load_program

    cases, marker = hostile
    for case, (path, named) in cases.items():
        with pytest.raises(ModelLoadError) as submit:
            check_archive(path)
        with pytest.raises(ModelLoadError) as worker:
            load_program(path)
        for e in (submit.value, worker.value):
            assert named in str(e) and "\n" not in str(e), (case, str(e))
    assert not marker.exists()


def test_the_payloads_do_run_when_torch_itself_loads_the_files(hostile, tmp_path):
    cases, marker = hostile
    probe = "import sys, torch\ntry:\n    torch.export.load(sys.argv[1])\nexcept Exception:\n    pass\n"
    for case in ("an AOTInductor shared library", "an opaque_obj constant"):
        marker.unlink(missing_ok=True)
        subprocess.run([sys.executable, "-c", probe, str(cases[case][0])], capture_output=True, timeout=300)
        assert marker.exists(), f"{case}: torch.export.load did not run the payload; the test proves nothing"
    marker.unlink()
    program = torch.export.load(str(cases["a node calling aten.from_file"][0]))
    program.module()(torch.randn(2, 8))  # from_file(shared=True) creates (or maps) the file as it runs
    assert marker.exists()
    marker.unlink()


def test_the_shared_library_writes_its_marker_when_loaded_so_its_absence_means_something(tmp_path):
    marker = tmp_path / "loaded"
    lib = shared_library(tmp_path / "probe.so", marker)
    subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(lib)!r})"], check=True, timeout=60)
    assert marker.read_text() == "the library ran\n"


def _member_cases(good: Path, root: Path) -> dict[str, tuple[Path, str]]:
    def link(zf: zipfile.ZipFile, top: str) -> None:
        info = zipfile.ZipInfo(f"{top}/data/weights/weight_9")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")

    def with_link(out: Path) -> Path:
        rewrite(good, out)
        with zipfile.ZipFile(out, "a") as zf:
            link(zf, zf.namelist()[0].split("/")[0])
        return out

    def bomb(out: Path) -> Path:
        rewrite(good, out)
        with zipfile.ZipFile(out, "a", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(zf.namelist()[0].split("/")[0] + "/data/weights/weight_9", b"\0" * (8 << 20))
        return out

    return {
        "a .so outside the AOTInductor folder": (rewrite(good, root / "so.pt2", add=[("{top}/libx.so", b"\x7fELF")]),
                                                 "a shared library"),
        "a legacy pickled weights file": (rewrite(good, root / "legacy.pt2", add=[
            ("{top}/data/weights/model.pt", pickle.dumps(1))]), "data/weights/model.pt"),
        "a legacy serialized_state_dict.pt": (rewrite(good, root / "serialized.pt2", add=[
            ("{top}/serialized_state_dict.pt", pickle.dumps(1))]), "serialized_state_dict.pt"),
        "a custom_obj constant": (rewrite(good, root / "custom.pt2", constants=lambda d: d["config"].update(
            c={"path_name": "custom_obj_0", "is_param": False, "use_pickle": False, "tensor_meta": None}), add=[
            ("{top}/data/constants/custom_obj_0", b"x")]), "custom_obj_0"),
        "a use_pickle weight": (_use_pickle(good, root / "use-pickle.pt2"), "pickled object"),
        "an absolute member name": (rewrite(good, root / "abs.pt2", add=[("/etc/cron.d/x", b"")]), "absolute"),
        "a backslash in a name": (rewrite(good, root / "bs.pt2", add=[("{top}\\..\\x", b"")]), "backslash"),
        "a second top folder": (rewrite(good, root / "tops.pt2", add=[("other/models/model.json", b"{}")]),
                                "2 top folders"),
        "a member outside any folder": (rewrite(good, root / "bare.pt2", add=[("version", b"1")]), "'version'"),
        "a symbolic link": (with_link(root / "link.pt2"), "symbolic link"),
        "a zip bomb": (bomb(root / "bomb.pt2"), "zip bomb"),
        "an unknown extra file": (rewrite(good, root / "extra.pt2", add=[("{top}/extra/notes.txt", b"hi")]),
                                  "extra/notes.txt"),
    }


def _use_pickle(good: Path, out: Path) -> Path:
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("_weights_config.json"):
                cfg = json.loads(data)
                next(iter(cfg["config"].values()))["use_pickle"] = True
                data = json.dumps(cfg).encode()
            zout.writestr(info, data)
    return out


def test_members_torch_export_save_does_not_write_are_refused_by_name(small, tmp_path):
    cases = _member_cases(small, tmp_path)
    for case, (path, named) in cases.items():
        with pytest.raises(ModelLoadError) as e:
            check_archive(path, max_bytes=64 << 20)
        assert named in str(e.value), (case, str(e.value))
    with pytest.raises(ModelLoadError, match=r"weight_9' unpacks to 8388608 bytes, over the limit of 4194304"):
        check_archive(cases["a zip bomb"][0], max_bytes=4 << 20)


def _program_of(small: Path) -> dict[str, Any]:
    return json.loads(_read(small, "models/model.json"))


@pytest.mark.parametrize("case,edit,named", [
    ("an op of another namespace", lambda d: _node(d, "torch.ops.aten.relu.default").update(
        target="torch.ops.myns.evil.default"), "myns.evil.default"),
    ("an out= variant", lambda d: _node(d, "torch.ops.aten.relu.default").update(
        target="torch.ops.aten.relu.out"), "aten.relu.out"),
    ("an in-place op outside the list", lambda d: _node(d, "torch.ops.aten.relu.default").update(
        target="torch.ops.aten.copy_.default"), "aten.copy_.default"),
    ("a Python builtin", lambda d: _node(d, "torch.ops.aten.relu.default").update(target="builtins.eval"),
     "builtins.eval"),
    ("a higher-order op", lambda d: _node(d, "torch.ops.aten.relu.default").update(
        target="torch.ops.higher_order.cond"), "higher_order.cond"),
    ("a subgraph argument", lambda d: _node(d, "torch.ops.aten.relu.default")["inputs"].append(
        {"name": "g", "arg": {"as_graph": {"name": "g", "graph": {}}}, "kind": 1}), "subgraph"),
    ("an unknown verifier", lambda d: d.update(verifiers=["EXECUTORCH_LAX"]), "EXECUTORCH_LAX"),
    ("a buffer mutation output", lambda d: d["graph_module"]["signature"]["output_specs"].append(
        {"buffer_mutation": {"arg": {"name": "relu"}, "buffer_name": "fc1.weight"}}), "buffer_mutation"),
    ("an in-place op on the input", lambda d: _node(d, "torch.ops.aten.relu.default").update(
        target="torch.ops.aten.relu_.default", inputs=[{"name": "self", "arg": {"as_tensor": {"name": "features"}},
                                                        "kind": 1}]), "'features'"),
    ("a symbolic size that is Python", lambda d: d["graph_module"]["graph"]["tensor_values"]["features"]["sizes"][0]
     .update(as_expr={"expr_str": "__import__('os').system('id')", "hint": {"as_int": 2}}), "__import__"),
    ("argument names that are code", lambda d: d["graph_module"]["module_call_graph"][0]["signature"].update(
        forward_arg_names=["features=__import__('os')"]), "argument names"),
    ("an attribute path with a quote", lambda d: d["graph_module"]["signature"]["input_specs"][0]["parameter"]
     .update(parameter_name='fc1.w"+x'), "attribute path"),
    ("a CUDA device", lambda d: d["graph_module"]["graph"]["tensor_values"]["relu"]["device"].update(type="cuda"),
     "'cuda'"),
    ("training-mode dropout", lambda d: _node(d, "torch.ops.aten.relu.default").update(
        target="torch.ops.aten.dropout.default", inputs=[
            {"name": "input", "arg": {"as_tensor": {"name": "linear"}}, "kind": 1},
            {"name": "p", "arg": {"as_float": 0.5}, "kind": 1},
            {"name": "train", "arg": {"as_bool": True}, "kind": 1}]),
     "training mode"),
    ("an unknown top-level field", lambda d: d.update(extensions={"x": 1}), "extensions"),
])
def test_graph_json_outside_the_allow_lists_is_refused_naming_it(small, tmp_path, case, edit, named):
    path = rewrite(small, tmp_path / "m.pt2", program=edit)
    with pytest.raises(ModelLoadError) as e:
        check_archive(path)
    assert named in str(e.value), (case, str(e.value))


def test_guards_code_from_the_file_is_dropped_and_never_executed(small, tmp_path):
    from modelpress.optimize.sources.export import load_program

    marker = tmp_path / "guard-ran"
    code = f"open({str(marker)!r}, 'w') is not None"
    path = rewrite(small, tmp_path / "guards.pt2", program=lambda d: d.update(guards_code=[code]))
    # Control: torch itself compiles it into the module's guard function (the sample inputs enable the
    # guards), which runs on every call.
    torch.export.load(str(path)).module()(torch.randn(3, 8))
    assert marker.exists()
    marker.unlink()
    module = load_program(path).module()
    assert module(torch.randn(3, 8)).shape == (3, 3) and not marker.exists()


def test_sympify_evaluates_strings_so_only_size_arithmetic_passes():
    import sympy

    for real in ["Symbol('s77', positive=True, integer=True)", "Mul(Integer(768), Symbol('s77', positive=True, "
                 "integer=True))", "Min(Integer(768), Mul(Integer(768), Symbol('s77', positive=True, integer=True)))",
                 "FloorDiv(s0, 2) + 1"]:
        assert check_expr(real) is None, real
    for evil in ["__import__('os').system('id')", "Symbol('x').__class__", "Integer(2)**Integer(99999999)",
                 "open('f', 'w')", "exec('1')", "Symbol(chr(95))", "[x for x in ()]", "lambda: 1"]:
        assert check_expr(evil), evil
    assert sympy.sympify("Integer(1) + Integer(2)") == 3  # the parser the checked strings reach


def test_the_operator_lists_are_real_torch_schemas_and_only_the_in_place_ones_write():
    def schema(name: str):  # type: ignore[no-untyped-def]
        _, _, ns, packet, overload = name.split(".")
        return getattr(getattr(getattr(torch.ops, ns), packet), overload)._schema

    for name in PURE_OPS:
        s = schema(name)
        assert not s.is_mutable and not any(a.is_out for a in s.arguments), name
    for name in INPLACE_OPS:
        s = schema(name)
        written = [a.name for a in s.arguments if a.alias_info is not None and a.alias_info.is_write]
        assert written == ["self"], (name, written)
    assert VIEW_OPS <= PURE_OPS | SYM_OPS
    assert "torch.ops.aten.from_file.default" not in PURE_OPS | INPLACE_OPS


def test_the_loaded_program_is_checked_again_against_the_same_list(small):
    from modelpress.optimize.sources.export import check_loaded

    class Cumprod(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cumprod(x, 1)  # a pure op, but not on the list

    check_loaded(torch.export.load(str(small)), "small.pt2")
    with pytest.raises(ModelLoadError, match=r"aten\.cumprod\.default"):
        check_loaded(torch.export.export(Cumprod(), (torch.randn(2, 3),)), "cumprod.pt2")


def test_in_place_nodes_are_allowed_only_on_values_the_program_made(small):
    program = _program_of(small)
    assert check_program(program, "small.pt2") == []
    relu = _node(program, "torch.ops.aten.relu.default")
    relu["target"] = "torch.ops.aten.relu_.default"  # on the first linear's output: fine
    assert check_program(program, "small.pt2") == [relu["name"]]


def test_an_export_source_checks_and_loads_through_the_same_gates(hostile, small):
    from modelpress.optimize.sources import get_source, parse_model_ref

    src = get_source("export")
    cases, _ = hostile
    path, named = cases["a node calling aten.from_file"]
    ref = parse_model_ref(f"export:{path}", data={"eval": str(path)})
    assert any(named in p for p in src.check(ref))
    with pytest.raises(ModelLoadError, match="from_file"):
        src.build(ref)
    assert src.check(parse_model_ref(f"export:{small}", data={"eval": str(small)})) == []


def test_read_archive_reports_the_members_it_accepted(small):
    arc = read_archive(small)
    assert arc.top == "small" and arc.input_names == ["features"] and arc.inplace_nodes == []
    assert sorted(r for r in arc.members if r.startswith("data/weights/weight_")) == [
        f"data/weights/weight_{i}" for i in range(4)]


def test_json_nested_beyond_what_a_reader_walks_is_refused_in_one_line(small, tmp_path):
    deep = '{"graph_module": {"metadata": ' + "[" * 5000 + "]" * 5000 + "}}"
    out = tmp_path / "deep.pt2"
    with zipfile.ZipFile(small) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, deep if info.filename.endswith("models/model.json") else zin.read(info))
    with pytest.raises(ModelLoadError) as e:
        check_archive(out)
    assert "RecursionError" in str(e.value) and "\n" not in str(e.value)


def test_a_corrupt_weight_is_refused_at_submit_and_by_the_rebuild(small, tmp_path):
    from modelpress.optimize.sources.export import load_program

    data = bytearray(small.read_bytes())
    with zipfile.ZipFile(small) as zf:
        info = zf.getinfo("small/data/weights/weight_0")
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + 4] ^= 0xFF  # a byte of the tensor (torch pads headers)
    bad = tmp_path / "flipped.pt2"
    bad.write_bytes(bytes(data))
    assert check_archive(bad) == ["features"]  # the structure is intact ...
    with pytest.raises(ModelLoadError, match="weight_0' fails its checksum: the file is corrupt"):
        check_archive(bad, verify_data=True)  # ... the bytes are not (what submit checks)
    with pytest.raises(ModelLoadError, match="Bad CRC-32"):
        load_program(bad)

"""What can be known at submit time is refused then: a clear error, no row, no message; good jobs still go."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from modelpress.errors import UserInputError
from tests.bad_input.conftest import PRODUCER_MAX_WEIGHTS
from tests.faults.models import Tiny
from tests.faults.record import record

QUICK = "tests.faults.models:quick_spec"


class RunsCode:
    """Pickles to a call of ``os.system`` (what a malicious "weights" file carries)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _good_torch(path: Path) -> Path:
    torch.save(Tiny().state_dict(), path)
    return path


def _good_safetensors(path: Path) -> Path:
    from safetensors.torch import save_file

    save_file(Tiny().state_dict(), str(path))
    return path


def _truncated_torch(tmp: Path) -> Path:
    good = _good_torch(tmp / "good.pt").read_bytes()
    (tmp / "truncated.pt").write_bytes(good[: len(good) // 2])
    return tmp / "truncated.pt"


def _bitflip_torch(tmp: Path) -> Path:
    data = bytearray(_good_torch(tmp / "good.pt").read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside a tensor's bytes: the zip's CRC no longer matches
    (tmp / "flipped.pt").write_bytes(bytes(data))
    return tmp / "flipped.pt"


def _truncated_safetensors(tmp: Path) -> Path:
    good = _good_safetensors(tmp / "good.safetensors").read_bytes()
    (tmp / "truncated.safetensors").write_bytes(good[:-100])
    return tmp / "truncated.safetensors"


def _pickle_named_safetensors(tmp: Path) -> Path:
    (tmp / "evil.safetensors").write_bytes(pickle.dumps(RunsCode(tmp / "never"), protocol=2))
    return tmp / "evil.safetensors"


def _random_bytes(tmp: Path) -> Path:
    (tmp / "noise.pt").write_bytes(os.urandom(4096))
    return tmp / "noise.pt"


def _empty(tmp: Path) -> Path:
    (tmp / "empty.pt").write_bytes(b"")
    return tmp / "empty.pt"


def _too_big(tmp: Path) -> Path:
    (tmp / "big.pt").write_bytes(b"\x80" + b"\0" * PRODUCER_MAX_WEIGHTS)
    return tmp / "big.pt"


def _zip_bomb(tmp: Path) -> Path:
    # 4 MiB of zeros deflate to a few KiB: small on disk, over the limit once unpacked.
    path = tmp / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({}))
        zf.writestr("archive/data/0", b"\0" * (4 * 1024 * 1024))
    return path


def _zip_without_pickle(tmp: Path) -> Path:
    path = tmp / "notes.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "not weights")
    return path


def _huge_safetensors_header(tmp: Path) -> Path:
    (tmp / "header.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    return tmp / "header.safetensors"


WEIGHTS_CASES = {
    "truncated torch.save zip": (_truncated_torch, "corrupt or truncated"),
    "torch.save zip with a flipped byte": (_bitflip_torch, "fails its checksum"),
    "truncated safetensors": (_truncated_safetensors, "not a valid safetensors file"),
    "a pickle named .safetensors": (_pickle_named_safetensors, "not a valid safetensors file"),
    "a safetensors header claiming a terabyte": (_huge_safetensors_header, "not a valid safetensors file"),
    "random bytes": (_random_bytes, "neither a safetensors file nor a torch.save file"),
    "an empty file": (_empty, "is empty"),
    "a file over the size limit": (_too_big, "over the limit of 1048576 bytes"),
    "a zip bomb": (_zip_bomb, "unpacks to"),
    "a zip without data.pkl": (_zip_without_pickle, "without data.pkl"),
}


@pytest.mark.parametrize("case", list(WEIGHTS_CASES))
def test_broken_weights_are_refused_at_submit_with_the_reason_and_nothing_is_written(site, tmp_path, case):
    make, message = WEIGHTS_CASES[case]
    path = make(tmp_path)
    inputs = Path(site.settings.effective_artifact_store) / "inputs"
    before = (site.count_rows(), sorted(inputs.glob("*")))
    producer = site.producer()
    try:
        with pytest.raises(UserInputError, match=message) as refused:
            producer.submit(model=QUICK, recipe="dynamic-int8", backend="fbgemm", weights=str(path))
    finally:
        producer.close()
    assert (site.count_rows(), sorted(inputs.glob("*"))) == before  # no row, nothing staged
    record("bad_input", group="weights", case=case, stage="submit", error=str(refused.value))


def _recipe(tmp: Path, text: str, suffix: str = ".yaml") -> str:
    path = tmp / f"recipe{suffix}"
    path.write_text(text)
    return str(path)


RECIPE_CASES = {
    "a wrong type": ("name: r\nsteps:\n  - {type: prune_l1_unstructured, amount: lots}\n", r"steps\.0\.amount"),
    "an unknown step field": ("name: r\nsteps:\n  - {type: quantize_dynamic, bogus: 1}\n", r"steps\.0\.bogus"),
    "an unknown recipe field": ("name: r\ncolour: red\nsteps:\n  - {type: quantize_dynamic}\n", r"recipe\.colour"),
    "an unknown step type": ("name: r\nsteps:\n  - {type: quantize_int3}\n", r"unknown step type 'quantize_int3'"),
    "a negative budget": ("name: r\nsteps: [{type: quantize_dynamic}]\nbudget: {max_drop: -0.1}\n",
                          r"recipe\.budget\.max_drop"),
    "a NaN budget": ("name: r\nsteps: [{type: quantize_dynamic}]\nbudget: {max_drop: .nan}\n", r"budget\.max_drop"),
    "an empty step list": ("name: r\nsteps: []\n", r"recipe\.steps"),
    "an empty module list": ("name: r\nsteps:\n  - {type: quantize_dynamic, module_types: []}\n",
                             r"steps\.0\.module_types"),
    "a negative time limit": ("name: r\nsteps: [{type: quantize_dynamic}]\ntime_limit_s: -5\n", r"time_limit_s"),
    "a time limit above the deployment's": ("name: r\nsteps: [{type: quantize_dynamic}]\ntime_limit_s: 999999\n",
                                            r"above this deployment's MODELPRESS_TASK_SOFT_TIME_LIMIT"),
    "a name that is a path": ("name: ../../etc/x\nsteps: [{type: quantize_dynamic}]\n", r"recipe\.name"),
    "a list instead of a mapping": ("- {type: quantize_dynamic}\n", r"expected a mapping"),
    "invalid YAML": ("name: r\nsteps: [\n", r"not valid YAML"),
}


@pytest.mark.parametrize("case", list(RECIPE_CASES))
def test_malformed_recipes_are_refused_at_submit_naming_the_field(site, tmp_path, case):
    text, message = RECIPE_CASES[case]
    before = site.count_rows()
    producer = site.producer()
    try:
        with pytest.raises(UserInputError, match=message) as refused:
            producer.submit(model=QUICK, recipe=_recipe(tmp_path, text), backend="fbgemm")
    finally:
        producer.close()
    assert site.count_rows() == before
    record("bad_input", group="recipe", case=case, stage="submit", error=str(refused.value))


NAME_CASES = {
    "an unknown model": (dict(model="resnet9000"), "unknown model 'resnet9000'"),
    "a factory outside the allow-list": (dict(model="os:system"), "is not allowed: its module is outside"),
    "an allow-listed prefix with a path after it": (dict(model="tests.faults.models/../../x:spec"), "not a dotted module path"),
    "a relative module inside the allow-list": (dict(model="tests.faults.models..x:spec"), "not a dotted module path"),
    "an attribute that is a path": (dict(model="tests.faults.models:../../x"), "not a dotted module path"),
    "an over-long name": (dict(model="tests.faults.models." + "a" * 400 + ":f"), "1 to 300 characters"),
    "an unknown backend": (dict(backend="tpu"), "unknown backend 'tpu'"),
    "a backend that is another queue": (dict(backend="ops"), "unknown backend 'ops'"),
    "an unknown recipe": (dict(recipe="int3-magic"), "unknown recipe 'int3-magic'"),
    "a recipe file that does not exist": (dict(recipe="/nonexistent/r.yaml"), "does not exist"),
    "weights that do not exist": (dict(weights="/nonexistent/w.pt"), "does not exist"),
}


@pytest.mark.parametrize("case", list(NAME_CASES))
def test_unknown_or_unsafe_names_are_refused_at_submit(site, case):
    overrides, message = NAME_CASES[case]
    request = {"model": QUICK, "recipe": "dynamic-int8", "backend": "fbgemm", **overrides}
    before = site.count_rows()
    producer = site.producer()
    try:
        with pytest.raises(UserInputError, match=message) as refused:
            producer.submit(**request)
    finally:
        producer.close()
    assert site.count_rows() == before
    record("bad_input", group="name", case=case, stage="submit", error=str(refused.value))


def test_the_cli_prints_a_refusal_as_one_error_line_and_exits_2(site, tmp_path):
    recipe = _recipe(tmp_path, json.dumps({"name": "r", "steps": [{"type": "quantize_dynamic", "bogus": 1}]}), ".json")
    env = {**site.env, "MODELPRESS_FACTORY_ALLOWLIST": "tests.faults.models"}
    out = subprocess.run([sys.executable, "-m", "modelpress", "submit", "--model", QUICK, "--recipe", recipe,
                          "--backend", "fbgemm"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "steps.0.bogus" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_after_every_refusal_a_good_job_from_the_same_producer_still_runs(site, tmp_path):
    site.worker()
    producer = site.producer()
    try:
        for bad in (dict(backend="tpu"), dict(model="os:system"), dict(recipe="int3-magic")):
            with pytest.raises(UserInputError):
                producer.submit(**{"model": QUICK, "recipe": "dynamic-int8", "backend": "fbgemm", **bad})
        good = producer.submit(model=QUICK, recipe="dynamic-int8", backend="fbgemm",
                               weights=str(_good_torch(tmp_path / "w.pt")))
    finally:
        producer.close()
    (row,) = site.wait_finished([good]).values()
    # Ran to a result; its 1 % default budget gives the verdict (a 64-row eval moves in 1.6 % steps).
    assert row["status"] in ("succeeded", "rejected") and row["artifact_uri"], row["error"]


def test_pickled_code_in_a_weights_file_is_live_when_unpickled_so_its_absence_later_means_something(tmp_path):
    # The control for the run-time tests: this payload really runs when a plain unpickler sees it.
    marker = tmp_path / "ran"
    payload = io.BytesIO()
    torch.save({"fc1.weight": RunsCode(marker)}, payload)
    code = "import sys, torch, io; torch.load(io.BytesIO(sys.stdin.buffer.read()), weights_only=False)"
    subprocess.run([sys.executable, "-c", code], input=payload.getvalue(), timeout=120, check=True,
                   capture_output=True)
    assert marker.exists()

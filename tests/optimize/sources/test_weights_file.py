"""A weights file's structure checked without torch (``sources.weights_file``): what the producer refuses."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest

from modelpress.errors import ModelLoadError
from modelpress.optimize.sources.weights_file import check_weights_file, safetensors_header, weights_file_problems
from tests.tiny_model_files import safetensors_file

MB = 1 << 20


def test_a_sound_safetensors_file_passes_and_its_header_is_read_without_loading_a_tensor(tmp_path: Path):
    path = safetensors_file(tmp_path / "w.safetensors", {"fc.weight": [3, 2]})
    check_weights_file(path, max_bytes=MB)
    assert safetensors_header(path)["fc.weight"]["shape"] == [3, 2]
    assert weights_file_problems(path, max_bytes=MB) == []


def test_a_safetensors_file_cut_short_or_claiming_a_huge_header_is_refused(tmp_path: Path):
    good = safetensors_file(tmp_path / "good.safetensors", {"fc.weight": [3, 2]}).read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(good[:-4])
    with pytest.raises(ModelLoadError, match="its tensors need 24 data bytes, the file has 20"):
        check_weights_file(tmp_path / "cut.safetensors", max_bytes=MB)
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(ModelLoadError, match="its header claims 1000000000000 bytes"):
        check_weights_file(tmp_path / "huge.safetensors", max_bytes=MB)
    assert safetensors_header(tmp_path / "huge.safetensors") == {}


def test_a_zip_without_a_pickle_or_that_unpacks_past_the_limit_is_not_a_torch_save_file(tmp_path: Path):
    with zipfile.ZipFile(tmp_path / "notes.pt", "w") as zf:
        zf.writestr("readme.txt", "not weights")
    with pytest.raises(ModelLoadError, match="zip without data.pkl"):
        check_weights_file(tmp_path / "notes.pt", max_bytes=MB)
    with zipfile.ZipFile(tmp_path / "bomb.pt", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("archive/data/0", b"\0" * (2 * MB))
    with pytest.raises(ModelLoadError, match="unpacks to"):
        check_weights_file(tmp_path / "bomb.pt", max_bytes=MB)


def test_a_missing_oversized_or_foreign_file_is_named_as_a_problem_not_raised(tmp_path: Path):
    (tmp_path / "noise.pt").write_bytes(b"GIF89a" + bytes(10))
    (tmp_path / "big.pt").write_bytes(b"\x80" + bytes(MB))
    assert weights_file_problems(tmp_path / "none.pt", max_bytes=MB) == [f"weights file {tmp_path / 'none.pt'} does "
                                                                         "not exist"]
    assert "over the limit of 1048576 bytes" in weights_file_problems(tmp_path / "big.pt", max_bytes=MB)[0]
    assert "neither a safetensors file nor a torch.save file" in weights_file_problems(tmp_path / "noise.pt",
                                                                                       max_bytes=MB)[0]

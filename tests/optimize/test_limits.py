"""Decoded-size limits: tiny files that would decode huge are refused from headers and counts, before decoding.

Each case builds a file of a few bytes to a few KB in ``tmp_path`` whose decoded size is gigabytes (or
terabytes), and checks that the reader (worker side) and the submit-time check refuse it in one line that
names the value, the limit and the environment variable that raises it, without decoding anything.
"""

from __future__ import annotations

import json
import resource
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modelpress.errors import DataError
from modelpress.optimize.limits import DecodedLimits, current_limits, pillow_guard
from modelpress.optimize.sources import parse_model_ref
from modelpress.optimize.sources.common import tiled_input
from modelpress.optimize.sources.data import read_images, read_tensors
from modelpress.optimize.sources.data_checks import (
    decoded_size_problems,
    image_folder_limit_problems,
    image_header_size,
    tensor_limit_problems,
)
from modelpress.optimize.sources.ref import ModelRefError

PRE = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every decode of an image opened from a file (``Image.load``; images the test makes in memory
    are not counted): a refusal "before decoding" must leave this empty."""
    decoded: list[str] = []
    real = Image.Image.load

    def load(self):  # type: ignore[no-untyped-def]
        if getattr(self, "filename", None):
            decoded.append(str(self.filename))
        return real(self)

    monkeypatch.setattr(Image.Image, "load", load)
    return decoded


def one_pixel_pngs(folder: Path, n: int) -> Path:
    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (1, 1), (i % 256, 0, 0)).save(folder / f"{i:04d}.png")
    return folder


def test_every_limit_is_read_from_its_environment_variable_and_settings_exposes_the_same(monkeypatch, tmp_path):
    from modelpress.settings import Settings

    for name in DecodedLimits.model_fields:
        monkeypatch.setenv(DecodedLimits.env(name), "7")
    limits = current_limits()
    assert all(getattr(limits, name) == 7 for name in DecodedLimits.model_fields)
    assert Settings(home=tmp_path).decoded_limits == limits


def test_a_limit_below_one_is_refused_when_the_settings_are_read(monkeypatch):
    monkeypatch.setenv("MODELPRESS_MAX_IMAGE_PIXELS", "0")
    with pytest.raises(ValueError, match="max_image_pixels"):
        current_limits()


def test_a_thousand_one_pixel_pngs_cropped_to_4096_are_refused_by_the_side_cap_before_one_is_decoded(
        tmp_path, no_decoding):
    folder = one_pixel_pngs(tmp_path / "imgs", 1000)
    assert sum(f.stat().st_size for f in folder.iterdir()) < 100_000  # < 100 KB on disk; 200 GB as floats
    with pytest.raises(DataError) as refused:
        read_images(folder, {**PRE, "resize": 4096, "crop": 4096})
    assert str(refused.value) == ("preprocess resize 4096, over the limit of 1,024 pixels: use a smaller resize "
                                  "(224 to 512 is usual), or raise MODELPRESS_MAX_IMAGE_SIDE")
    assert no_decoding == []


def test_a_thousand_one_pixel_pngs_cropped_to_1024_are_refused_by_their_decoded_total(tmp_path, no_decoding):
    folder = one_pixel_pngs(tmp_path / "imgs", 1000)
    before = _peak_rss_mb()
    with pytest.raises(DataError, match=r"image folder imgs: 1,000 images x 3 x 1024x1024 x 4 bytes decode to "
                                        r"12,582,912,000 bytes, over the limit of 2,147,483,648 bytes: .*"
                                        r"or raise MODELPRESS_MAX_IMAGE_DATA_BYTES$"):
        read_images(folder, {**PRE, "resize": 1024, "crop": 1024})
    assert no_decoding == [] and _peak_rss_mb() - before < 200


def test_the_same_thousand_pngs_at_a_usual_crop_are_read_so_the_decode_counter_counts(tmp_path, no_decoding):
    x, labels, _ = read_images(one_pixel_pngs(tmp_path / "imgs", 1000), {**PRE, "resize": 8, "crop": 8})
    assert tuple(x.shape) == (1000, 3, 8, 8) and labels is None
    assert len(set(no_decoding)) == 1000


def test_a_100000x1_panorama_is_refused_by_its_aspect_ratio_from_the_header(tmp_path, no_decoding):
    (tmp_path / "pano").mkdir()
    Image.new("L", (100_000, 1)).save(tmp_path / "pano" / "wide.png")  # resized to 256: 25.6M x 256 x 3 = 20 GB
    message = ("image wide.png is 100000x1 (aspect ratio 100,000), over the limit of 16: crop or pad it closer to "
               "square, or raise MODELPRESS_MAX_IMAGE_ASPECT")
    with pytest.raises(DataError) as refused:
        read_images(tmp_path / "pano", {**PRE, "resize": 256, "crop": 224})
    assert str(refused.value) == message and no_decoding == []
    assert image_folder_limit_problems(tmp_path / "pano") == [message]  # the same line at submit


def test_a_squarer_image_whose_resize_would_still_be_huge_is_refused_by_its_resized_pixels(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELPRESS_MAX_IMAGE_ASPECT", "1000")
    (tmp_path / "p").mkdir()
    Image.new("L", (400, 1)).save(tmp_path / "p" / "strip.png")  # resize 1024 → 409600x1024 = 419M pixels
    with pytest.raises(DataError, match=r"strip.png \(400x1\) resized to 1024 on its shorter side is 409600x1024 = "
                                        r"419,430,400 pixels, over the limit of 64,000,000 pixels"):
        read_images(tmp_path / "p", {**PRE, "resize": 1024, "crop": 224})


def test_an_image_just_over_the_pixel_limit_is_refused_though_pillow_alone_would_not_even_warn(tmp_path, no_decoding):
    (tmp_path / "big").mkdir()
    Image.new("L", (8000, 8001)).save(tmp_path / "big" / "big.png")  # 64,008,000 pixels, ~60 KB on disk
    assert 8000 * 8001 < Image.MAX_IMAGE_PIXELS  # Pillow's own default (89M) lets it through silently
    with pytest.raises(DataError, match=r"^image big.png has 64,008,000 pixels, over the limit of 64,000,000 pixels: "
                                        r"downscale it, or raise MODELPRESS_MAX_IMAGE_PIXELS$"):
        read_images(tmp_path / "big", {**PRE, "resize": 256, "crop": 224})
    assert no_decoding == []
    assert image_folder_limit_problems(tmp_path / "big")[0].startswith("image big.png has 64,008,000 pixels")


def test_pillows_warning_between_one_and_two_times_its_limit_becomes_an_error_only_inside_the_guard(tmp_path):
    path = tmp_path / "a.png"
    Image.new("L", (40, 30)).save(path)  # 1,200 pixels: between 1x and 2x a 1,000-pixel limit
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(DataError, match="image a.png has 1,200 pixels, over the limit of 1,000 pixels"):
        image_header_size(path, DecodedLimits(max_image_pixels=1000))
    assert Image.MAX_IMAGE_PIXELS == before  # restored
    with pytest.warns(Image.DecompressionBombWarning):  # what Pillow does by itself: only a warning
        Image.MAX_IMAGE_PIXELS = 1000
        try:
            Image.open(path).close()
        finally:
            Image.MAX_IMAGE_PIXELS = before
    with pillow_guard(DecodedLimits()):
        assert Image.MAX_IMAGE_PIXELS == 64_000_000


def _huge_safetensors(path: Path) -> Path:
    header = json.dumps({"x": {"dtype": "F32", "shape": [100_000, 100_000], "data_offsets": [0, 4 * 10**10]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
    return path


def test_a_safetensors_header_declaring_a_huge_shape_is_refused_by_the_element_limit_before_loading(tmp_path):
    path = _huge_safetensors(tmp_path / "d.safetensors")
    message = ("data file d.safetensors declares 10,000,000,000 tensor elements (x: [100000, 100000]), over the limit "
               "of 268,435,456 elements: use fewer or smaller rows, or raise MODELPRESS_MAX_TENSOR_ELEMENTS")
    with pytest.raises(DataError) as refused:
        read_tensors(path, ["x"])
    assert str(refused.value) == message
    assert tensor_limit_problems(path) == [message]


def test_an_npz_whose_npy_header_declares_a_huge_shape_is_refused_without_inflating_the_member(tmp_path):
    from numpy.lib import format as npy

    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf, zf.open("x.npy", "w") as member:
        npy.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**5)})
        member.write(b"\0" * 4096)
    assert path.stat().st_size < 10_000
    with pytest.raises(DataError, match=r"declares 100,000,000,000 tensor elements \(x: \[1000000, 100000\]\), .*"
                                        "MODELPRESS_MAX_TENSOR_ELEMENTS"):
        read_tensors(path, ["x"])


def test_tensor_files_within_the_element_limit_still_read(tmp_path):
    np.savez_compressed(tmp_path / "d.npz", x=np.zeros((10, 4), np.float32))
    (x,), _ = read_tensors(tmp_path / "d.npz", ["x"])
    assert tuple(x.shape) == (10, 4) and tensor_limit_problems(tmp_path / "d.npz") == []


def test_max_length_65536_is_refused_by_the_cap_and_a_length_above_the_models_positions_by_the_model(monkeypatch):
    with pytest.raises(ModelRefError, match=r"max_length: 65,536 tokens per row, over the limit of 8,192 tokens: "
                                            r"give a smaller max_length, or raise MODELPRESS_MAX_TEXT_LENGTH"):
        parse_model_ref("hf:m", data={"eval": "e.jsonl"}, max_length=65536)
    monkeypatch.setenv("MODELPRESS_MAX_TEXT_LENGTH", "65536")
    assert parse_model_ref("hf:m", data={"eval": "e.jsonl"}, max_length=65536).max_length == 65536


def test_rows_times_max_length_is_refused_before_the_tokenizer_runs(tmp_path):
    from modelpress.optimize.sources.hf import HFSource

    class NoTokenizer:
        def __call__(self, *a, **k):  # type: ignore[no-untyped-def]
            raise AssertionError("the tokenizer ran")

    path = tmp_path / "e.jsonl"
    path.write_text('{"text": "a"}\n' * 2049)
    with pytest.raises(DataError, match=r"e.jsonl: 2,049 rows x max_length 8192 = 16,785,408 tokens \(each row is "
                                        r"padded to max_length\), over the limit of 16,777,216 tokens"):
        HFSource("hf")._encode(NoTokenizer(), str(path), 8192, None, None)


def test_latency_batches_are_bounded_in_number_and_size_wherever_a_ref_is_made():
    with pytest.raises(ModelRefError, match=r"latency_batches: 9 batch sizes, over the limit of 8 sizes"):
        parse_model_ref("export:m.pt2", data={"eval": "d.npz"}, latency_batches=tuple(range(1, 10)))
    with pytest.raises(ModelRefError, match=r"a batch of 2,048 rows, over the limit of 1,024 rows: .*"
                                            "MODELPRESS_MAX_LATENCY_BATCH$"):
        parse_model_ref("export:m.pt2", data={"eval": "d.npz"}, latency_batches=(1, 2048))


def test_a_latency_batch_of_a_few_big_rows_repeated_is_refused_before_it_is_copied():
    make = tiled_input((torch.zeros(2, 1024**2),))  # two 4 MiB rows; batch 1024 would copy them to 4 GiB
    before = _peak_rss_mb()
    with pytest.raises(DataError, match=r"latency batch: 1,024 rows x 4,194,304 bytes per row = 4,294,967,296 bytes, "
                                        r"over the limit of 1,073,741,824 bytes"):
        make(1024)
    assert _peak_rss_mb() - before < 200
    assert make(8).shape == (8, 1024**2)  # 32 MiB: within the limit


def test_submit_checks_crop_max_length_and_latency_bytes_of_a_ref_from_counts_and_headers(tmp_path):
    one_pixel_pngs(tmp_path / "imgs", 1000)
    vision = parse_model_ref("torchvision:resnet18", weights="w.safetensors", data={"eval": str(tmp_path / "imgs")},
                             preprocess={"crop": 1024})
    assert [(f, m.split(":")[0]) for f, m in decoded_size_problems(vision)] == [(("data", "eval"), "image folder imgs")]

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    (tmp_path / "e.jsonl").write_text('{"text": "a"}\n' * 4097)
    hf = parse_model_ref(f"hf:{tmp_path / 'm'}", data={"eval": str(tmp_path / "e.jsonl")}, max_length=4096)
    assert [m.split(",")[0] for _, m in decoded_size_problems(hf)] == ["e.jsonl: 4"]
    too_long = hf.with_paths(max_length=8192)
    assert decoded_size_problems(too_long) == [(("max_length",), "max_length 8192 is more than the model's 4096 "
                                                "positions (max_position_embeddings in its config.json): give "
                                                "max_length 4096 or less")]

    np.savez_compressed(tmp_path / "wide.npz", x=np.zeros((2, 1024**2), np.float32))  # 4 MiB rows, 8 KB on disk
    export = parse_model_ref("export:m.pt2", data={"eval": str(tmp_path / "wide.npz")}, latency_batches=(1, 512))
    (field, message), = decoded_size_problems(export)
    assert field == ("latency_batches",) and message.startswith("the largest latency batch: 512 rows x 4,194,304 bytes")
    assert decoded_size_problems(export.with_paths(latency_batches=(1, 32))) == []


def test_a_jsonl_file_with_more_rows_than_the_worker_reads_is_refused_at_submit_from_a_line_count(tmp_path):
    from modelpress.optimize.sources.data_checks import MAX_ROWS, jsonl_problems

    path = tmp_path / "e.jsonl"
    path.write_text('{"text": "a"}\n' * (MAX_ROWS + 1))
    assert jsonl_problems(path, read_limit=0) == ["data file e.jsonl has more than 200,000 rows, the limit"]
    path.write_text('{"text": "a"}\n\n' * MAX_ROWS)  # blank lines are not rows
    assert jsonl_problems(path, read_limit=0) == []

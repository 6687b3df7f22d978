"""Decoded-size limits: what a user's data may become in memory, checked before anything is decoded.

Byte limits count bytes on disk, and hostile data is small on disk: a 67-byte PNG cropped to 4096
decodes to 200 MB of floats, a 100,000x1 panorama resized to 256 to 20 GB, a safetensors or ``.npy``
header can declare any shape, and every text row is padded to ``max_length``. Each limit here bounds
one of those sizes by arithmetic on headers and counts, before the data is read. Each is a setting
(``MODELPRESS_<NAME>``) with a safe default, and each refusal is one line naming the value, the limit
and the variable that raises it.

``optimize`` never imports ``modelpress.settings``, so ``DecodedLimits`` reads the environment itself;
``modelpress.settings.Settings.decoded_limits`` exposes the same object, so there is still one typed
settings surface. Torch-free: submit (``sources.submit``) checks the same limits the worker does.

Example:
    >>> lim = DecodedLimits(max_image_pixels=100)
    >>> lim.refusal("max_image_pixels", "image a.png has 120 pixels", unit="pixels", fix="downscale it")
    'image a.png has 120 pixels, over the limit of 100 pixels: downscale it, or raise MODELPRESS_MAX_IMAGE_PIXELS'
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from typing import Iterator, Sequence

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelpress.errors import DataError

ENV_PREFIX = "MODELPRESS_"
CHANNELS = 3  # images are decoded to RGB
FLOAT_BYTES = 4  # preprocessed images are float32
TOKEN_BYTES = 8  # tokenizers return int64
TEXT_INPUTS = 3  # input_ids, attention_mask and (for some tokenizers) token_type_ids


class DecodedLimits(BaseSettings):
    """The decoded-size limits, each from ``MODELPRESS_<FIELD NAME>`` (see docs/faults.md, "Decoded-size limits").

    Example:
        >>> DecodedLimits().env("max_image_pixels")
        'MODELPRESS_MAX_IMAGE_PIXELS'
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    max_image_pixels: int = Field(
        default=64_000_000, gt=0, description="Pixels (width x height) of one image, read from its header; also "
                                              "of the image once resized.")
    max_image_aspect: float = Field(
        default=16.0, ge=1, description="Longer side / shorter side of one image: resizing the shorter side to "
                                        "`resize` makes the longer one `resize` x aspect.")
    max_image_side: int = Field(default=1024, gt=0, description="Largest preprocess `resize` and `crop` (pixels).")
    max_image_data_bytes: int = Field(
        default=2 * 1024**3, gt=0, description="One image folder decoded: images x 3 x crop x crop x 4 bytes.")
    max_text_length: int = Field(default=8192, gt=0, description="Largest text `max_length` (tokens per row).")
    max_text_tokens: int = Field(
        default=16 * 1024**2, gt=0, description="Rows x max_length of one JSONL file (every row is padded).")
    max_tensor_elements: int = Field(
        default=256 * 1024**2, gt=0, description="Elements of all tensors of one .safetensors/.npz data file, "
                                                 "from its headers.")
    max_latency_batches: int = Field(default=8, gt=0, description="How many latency batch sizes one model times.")
    max_latency_batch: int = Field(default=1024, gt=0, description="Rows in one latency batch.")
    max_latency_batch_bytes: int = Field(
        default=1024**3, gt=0, description="Bytes of one latency batch (rows x bytes per row; rows are repeated "
                                           "to fill it).")

    @staticmethod
    def env(name: str) -> str:
        """The environment variable of limit ``name``."""
        return ENV_PREFIX + name.upper()

    def refusal(self, name: str, what: str, *, unit: str, fix: str) -> str:
        """One line: ``what`` (the value found), the limit with its unit, what to do, and the variable.

        Example:
            >>> DecodedLimits(max_latency_batches=2).refusal("max_latency_batches", "3 latency batches",
            ...                                              unit="batches", fix="time fewer sizes")
            '3 latency batches, over the limit of 2 batches: time fewer sizes, or raise MODELPRESS_MAX_LATENCY_BATCHES'
        """
        limit = f"{_num(getattr(self, name))} {unit}".strip()
        return f"{what}, over the limit of {limit}: {fix}, or raise {self.env(name)}"

    def check(self, name: str, value: float, what: str, *, unit: str, fix: str) -> None:
        """Raise ``DataError`` (``refusal``) when ``value`` is over limit ``name``.

        Example:
            >>> DecodedLimits(max_text_length=64).check("max_text_length", 65, "max_length 65", unit="tokens",
            ...                                         fix="shorten it")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            modelpress.errors.DataError: max_length 65, over the limit of 64 tokens: shorten it, or raise ...
        """
        if value > getattr(self, name):
            raise DataError(self.refusal(name, what, unit=unit, fix=fix))


def current_limits() -> DecodedLimits:
    """The limits from this process's environment, read now (cheap; a changed variable is seen at once).

    Example:
        >>> current_limits().max_latency_batches >= 1
        True
    """
    return DecodedLimits()


def _num(v: float) -> str:
    return f"{int(v):,}" if float(v).is_integer() else f"{v:g}"


# ----------------------------------------------------------------------------- images
def check_image_size(width: int, height: int, name: str, limits: DecodedLimits, *, resize: int | None = None) -> None:
    """Refuse image ``name`` by its header size: pixels, aspect ratio, and its pixels once resized to ``resize``.

    Example:
        >>> check_image_size(100_000, 1, "pano.png", DecodedLimits(), resize=256)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        modelpress.errors.DataError: image pano.png is 100000x1 (aspect ratio 100,000), over the limit of 16: ...
    """
    w, h = max(1, int(width)), max(1, int(height))
    limits.check("max_image_pixels", w * h, f"image {name} is {w}x{h} = {w * h:,} pixels", unit="pixels",
                 fix="downscale it")
    aspect = max(w, h) / min(w, h)
    limits.check("max_image_aspect", aspect, f"image {name} is {w}x{h} (aspect ratio {_num(round(aspect, 2))})",
                 unit="", fix="crop or pad it closer to square")
    if resize is not None:
        # Resizing the shorter side to ``resize`` makes the longer one resize x aspect: bounded before PIL does it.
        s = resize / min(w, h)
        rw, rh = max(1, round(w * s)), max(1, round(h * s))
        limits.check("max_image_pixels", rw * rh, f"image {name} ({w}x{h}) resized to {resize} on its shorter side "
                     f"is {rw}x{rh} = {rw * rh:,} pixels", unit="pixels", fix="use a smaller resize or a squarer image")


def check_preprocess_sides(resize: int, crop: int, limits: DecodedLimits, *, prefix: str = "preprocess ") -> None:
    """Refuse a ``resize`` or ``crop`` above ``max_image_side``; the message starts with ``prefix``.

    Example:
        >>> check_preprocess_sides(256, 224, DecodedLimits())  # within the limit: no error
    """
    for key, v in (("resize", resize), ("crop", crop)):
        limits.check("max_image_side", v, f"{prefix}{key} {v}", unit="pixels",
                     fix=f"use a smaller {key} (224 to 512 is usual)")


def image_row_bytes(crop: int) -> int:
    """Bytes of one preprocessed image: 3 channels x crop x crop float32."""
    return CHANNELS * crop * crop * FLOAT_BYTES


def check_image_data(count: int, crop: int, where: str, limits: DecodedLimits) -> None:
    """Refuse an image folder whose images, preprocessed, take more than ``max_image_data_bytes``.

    Every image becomes 3 x crop x crop float32 whatever its size on disk: 1,000 one-pixel PNGs with
    ``crop: 1024`` are 12.6 GB.

    Example:
        >>> check_image_data(1000, 224, "image folder val", DecodedLimits())  # 602 MB: within the limit
    """
    total = count * image_row_bytes(crop)
    limits.check("max_image_data_bytes", total,
                 f"{where}: {count:,} images x 3 x {crop}x{crop} x 4 bytes decode to {total:,} bytes", unit="bytes",
                 fix="use fewer images or a smaller crop")


def _bomb_pixels(e: BaseException) -> str:
    m = re.search(r"\((\d+) pixels\)", str(e))
    return f"{int(m.group(1)):,}" if m else "too many"


@contextmanager
def pillow_guard(limits: DecodedLimits, what: str = "an image") -> Iterator[None]:
    """Pillow's decompression-bomb check at ``max_image_pixels``, raising instead of warning, for the block.

    Pillow raises ``DecompressionBombError`` only above twice its ``MAX_IMAGE_PIXELS`` and merely warns
    between 1x and 2x; inside this block both are a ``DataError`` naming our limit and ``what``. The previous
    ``MAX_IMAGE_PIXELS`` and warning filters are restored on exit.

    Example:
        >>> with pillow_guard(DecodedLimits()):
        ...     pass
    """
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                yield
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise DataError(limits.refusal("max_image_pixels", f"{what} has {_bomb_pixels(e)} pixels",
                                               unit="pixels", fix="downscale it")) from None
    finally:
        Image.MAX_IMAGE_PIXELS = old


# ----------------------------------------------------------------------------- text
def check_text_length(max_length: int, limits: DecodedLimits, *, positions: int | None = None) -> None:
    """Refuse a ``max_length`` above ``max_text_length`` or above the model's positions.

    Example:
        >>> check_text_length(128, DecodedLimits(), positions=64)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        modelpress.errors.DataError: max_length 128 is more than the model's 64 positions ...
    """
    if positions and max_length > positions:
        raise DataError(f"max_length {max_length} is more than the model's {positions} positions "
                        f"(max_position_embeddings in its config.json): give max_length {positions} or less")
    limits.check("max_text_length", max_length, f"{max_length:,} tokens per row", unit="tokens",
                 fix="give a smaller max_length")


def check_text_tokens(rows: int, max_length: int, where: str, limits: DecodedLimits) -> None:
    """Refuse text whose rows x ``max_length`` (every row is padded to it) is above ``max_text_tokens``.

    Example:
        >>> check_text_tokens(1000, 128, "e.jsonl", DecodedLimits())  # 128,000 tokens: within the limit
    """
    limits.check("max_text_tokens", rows * max_length,
                 f"{where}: {rows:,} rows x max_length {max_length} = {rows * max_length:,} tokens (each row is "
                 "padded to max_length)", unit="tokens", fix="use fewer rows or a smaller max_length")


def text_row_bytes(max_length: int) -> int:
    """Bytes of one tokenized row: up to 3 int64 inputs of ``max_length``."""
    return TEXT_INPUTS * TOKEN_BYTES * max_length


# ----------------------------------------------------------------------------- tensors
def check_tensor_elements(shapes: dict[str, Sequence[int]], where: str, limits: DecodedLimits) -> None:
    """Refuse a data file whose tensors (shapes from its headers) hold more than ``max_tensor_elements``.

    Example:
        >>> check_tensor_elements({"x": [10**6, 10**6]}, "d.safetensors", DecodedLimits())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        modelpress.errors.DataError: data file d.safetensors declares 1,000,000,000,000 tensor elements ...
    """
    counts = {name: _prod(shape) for name, shape in shapes.items()}
    total = sum(counts.values())
    if total > limits.max_tensor_elements:
        big = max(counts, key=lambda n: counts[n])
        raise DataError(limits.refusal(
            "max_tensor_elements", f"data file {where} declares {total:,} tensor elements ({big}: "
            f"{list(shapes[big])})", unit="elements", fix="use fewer or smaller rows"))


def _prod(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


# ----------------------------------------------------------------------------- latency batches
def check_latency_batches(batches: Sequence[int], limits: DecodedLimits) -> None:
    """Refuse more latency batch sizes than ``max_latency_batches`` or a size above ``max_latency_batch``.

    Example:
        >>> check_latency_batches((1, 32), DecodedLimits())  # the default: no error
    """
    limits.check("max_latency_batches", len(batches), f"{len(batches)} batch sizes", unit="sizes",
                 fix="time fewer batch sizes")
    for b in batches:
        if b < 1:
            raise DataError(f"a batch of {b} rows: a batch has at least 1 row")
        limits.check("max_latency_batch", b, f"a batch of {b:,} rows", unit="rows", fix="time a smaller batch")


def check_batch_bytes(batch: int, row_bytes: int, where: str, limits: DecodedLimits) -> None:
    """Refuse a latency batch of ``batch`` rows of ``row_bytes`` each above ``max_latency_batch_bytes``.

    Rows are repeated to fill a batch larger than the data, so a few big rows make any batch size.

    Example:
        >>> check_batch_bytes(32, 602_112, "latency batch", DecodedLimits())  # 19 MB: no error
    """
    limits.check("max_latency_batch_bytes", batch * row_bytes,
                 f"{where}: {batch:,} rows x {row_bytes:,} bytes per row = {batch * row_bytes:,} bytes", unit="bytes",
                 fix="time smaller batches or use smaller rows")


__all__ = ["DecodedLimits", "check_batch_bytes", "check_image_data", "check_image_size", "check_latency_batches",
           "check_preprocess_sides", "check_tensor_elements", "check_text_length", "check_text_tokens",
           "current_limits", "image_row_bytes", "pillow_guard", "text_row_bytes"]

"""An ``hf:`` image classifier's preprocessing and class names, read from its folder as data (no transformers).

transformers' image processors are code chosen by name; modelpress reads ``preprocessor_config.json`` as JSON
and turns it into the ``{resize, crop, mean, std}`` that every image source uses (``data.preprocess_image``:
shorter side resized, centre crop, scaled to [0, 1], mean/std):

- ``size: {height, width}`` (ViT, DeiT, Swin): resize and crop to that side. transformers resizes the whole
  image to height × width; for a square image that is the same pixels, for another it keeps the aspect ratio
  and crops instead of stretching (recorded in the job's model description). Height and width must match.
- ``size: {shortest_edge}`` with ``crop_pct`` (ConvNeXt): below 384 the shorter side is resized to
  ``shortest_edge / crop_pct`` and the centre ``shortest_edge`` kept, as ConvNeXt's processor does; from 384
  the image is taken at ``shortest_edge`` whole.
- ``size`` then ``crop_size`` with ``do_center_crop`` (EfficientNet, MobileNet, RegNet, BEiT): resize then crop.
- ``do_flip_channel_order`` (MobileViT): channels given to the model as BGR; ``include_top`` and
  ``rescale_offset`` (EfficientNet): a second division by ``image_std``, and pixels scaled to [-1, 1].
- ``rescale_factor`` and ``do_rescale`` fold into mean and std (pixels scaled by 1/255 here): a model trained on
  pixels in [-1, 1] (``rescale_factor`` 1/127.5, mean 1) gets the same numbers.

The eval folder's class subfolders are named by the config's ``id2label`` names (or are class indices), so a
folder's labels mean the model's classes whatever their sort order.

Example:
    >>> preprocess_from({"size": {"height": 224, "width": 224}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    {'resize': 224, 'crop': 224, 'mean': [0.5, 0.5, 0.5], 'std': [0.5, 0.5, 0.5]}
    >>> class_ids(["cat", "dog"], {"0": "dog", "1": "cat"})
    [1, 0]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelpress.errors import DataError

PREPROCESSOR = "preprocessor_config.json"
_IMAGENET_MEAN, _IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _side(size: Any, what: str) -> tuple[int | None, int | None]:
    """(square side, shortest edge) of a processor's ``size`` or ``crop_size`` entry."""
    if isinstance(size, int) and not isinstance(size, bool):
        return size, None
    if not isinstance(size, dict):
        raise DataError(f"{PREPROCESSOR}: {what} must be a number or an object, not {type(size).__name__}")
    if "height" in size or "width" in size:
        h, w = size.get("height"), size.get("width")
        if not (isinstance(h, int) and isinstance(w, int)) or h != w:
            raise DataError(f"{PREPROCESSOR}: {what} is {h}x{w}; only square inputs are supported")
        return h, None
    if isinstance(size.get("shortest_edge"), int):
        return None, int(size["shortest_edge"])
    raise DataError(f"{PREPROCESSOR}: {what} {sorted(size)} is not supported (use height/width or shortest_edge)")


def preprocess_from(cfg: dict[str, Any]) -> dict[str, Any]:
    """``{resize, crop, mean, std}`` from a ``preprocessor_config.json`` object.

    Example:
        >>> preprocess_from({"size": {"shortest_edge": 224}, "crop_pct": 0.875})["resize"]
        256
    """
    square, shortest = _side(cfg.get("size", {"height": 224, "width": 224}), "size")
    crop_pct = cfg.get("crop_pct")
    if square is not None:
        resize = crop = square
    elif crop_pct is not None and shortest is not None and shortest < 384:
        if not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
            raise DataError(f"{PREPROCESSOR}: crop_pct must be in (0, 1], not {crop_pct!r}")
        resize, crop = int(shortest / crop_pct), shortest
    else:
        assert shortest is not None
        resize = crop = shortest
    if cfg.get("do_center_crop") and "crop_size" in cfg:
        c_square, c_short = _side(cfg["crop_size"], "crop_size")
        crop = c_square or c_short or crop
        if crop > resize:
            raise DataError(f"{PREPROCESSOR}: crop_size {crop} is larger than size {resize}")
    mean, std = cfg.get("image_mean", _IMAGENET_MEAN), cfg.get("image_std", _IMAGENET_STD)
    if "do_normalize" in cfg and not cfg["do_normalize"]:  # MobileViT's class leaves it None: no normalising
        mean, std = [0.0] * 3, [1.0] * 3
    for name, v in (("image_mean", mean), ("image_std", std)):
        if isinstance(v, (int, float)):
            v = [float(v)] * 3
        if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
            raise DataError(f"{PREPROCESSOR}: {name} must be 3 numbers (R, G, B)")
        if name == "image_mean":
            mean = [float(x) for x in v]
        else:
            std = [float(x) for x in v]
    if any(s <= 0 for s in std):
        raise DataError(f"{PREPROCESSOR}: image_std must be positive")
    factor = cfg.get("rescale_factor", 1 / 255) if cfg.get("do_rescale", True) else 1.0
    if not isinstance(factor, (int, float)) or factor <= 0:
        raise DataError(f"{PREPROCESSOR}: rescale_factor must be a positive number")
    if cfg.get("include_top"):
        # EfficientNet's processor divides by image_std a second time after normalising (its "include_top").
        top = cfg.get("image_std", _IMAGENET_STD)
        top = [float(top)] * 3 if isinstance(top, (int, float)) else [float(x) for x in top]
        std = [a * b for a, b in zip(std, top)]
    if cfg.get("do_rescale", True) and cfg.get("rescale_offset"):
        mean = [m + 1.0 for m in mean]  # EfficientNet's p·f − 1 (pixels to [-1, 1]) before normalising
    # Pixels p: the processor computes (p·f − m) / s; ours (p/255 − m′) / s′; equal for m′ = m/(255f), s′ = s/(255f).
    k = 255.0 * float(factor)
    if abs(k - 1.0) > 1e-6:
        mean, std = [m / k for m in mean], [s / k for s in std]
    out: dict[str, Any] = {"resize": int(resize), "crop": int(crop), "mean": mean, "std": std}
    if cfg.get("do_flip_channel_order"):
        out["channels"] = "bgr"  # flipped after scaling and normalising, as MobileViT's processor does
    return out


#: The processor settings this module reads; a saved file leaves out those equal to its class's defaults.
_KEYS = ("size", "crop_size", "do_center_crop", "crop_pct", "do_normalize", "image_mean", "image_std", "do_rescale",
         "rescale_factor", "rescale_offset", "include_top", "do_flip_channel_order")


def processor_defaults(name: Any) -> dict[str, Any]:
    """The defaults of transformers' own image processor class ``name`` (``image_processor_type``), read as class
    attributes (nothing is instantiated, no file's code runs); ``{}`` for a name transformers does not map.

    ``save_pretrained`` leaves out settings equal to the class's defaults (MobileViT's ``do_normalize``), so the
    file alone does not say what the processor does.

    Example:
        >>> processor_defaults("MobileViTImageProcessor")["do_flip_channel_order"]  # doctest: +SKIP
        True
    """
    if not isinstance(name, str):
        return {}
    import copy

    from modelpress.optimize.hf_env import prepare_transformers

    prepare_transformers()
    import transformers
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    known: set[str] = set()
    for v in IMAGE_PROCESSOR_MAPPING_NAMES.values():
        known |= {x for x in (v.values() if isinstance(v, dict) else v if isinstance(v, (tuple, list)) else [v])
                  if isinstance(x, str)}
    base = name.removesuffix("Fast")
    if base not in known:
        return {}
    cls = getattr(transformers, base, None)
    return {k: copy.deepcopy(getattr(cls, k)) for k in _KEYS if cls is not None and hasattr(cls, k)
            and (getattr(cls, k) is not None or k == "do_normalize")}


def read_preprocess(folder: str | Path, *, class_defaults: bool = False) -> dict[str, Any]:
    """The folder's preprocessing (``preprocess_from``), or ImageNet's 224 when it has no processor file.
    ``class_defaults``: fill settings the file leaves out from its processor class (``processor_defaults``; needs
    transformers, so the worker does it and submit, without it, checks the file as written).

    Example:
        >>> read_preprocess("/nonexistent")["crop"]
        224
    """
    from modelpress.optimize.sources.hf_files import FolderFileError, read_json_object

    path = Path(folder) / PREPROCESSOR
    if not path.is_file():
        return {"resize": 224, "crop": 224, "mean": list(_IMAGENET_MEAN), "std": list(_IMAGENET_STD)}
    try:
        cfg = read_json_object(path)
    except FolderFileError as e:
        raise DataError(f"HF model folder {folder}: {e}") from None
    if class_defaults:
        cfg = {**processor_defaults(cfg.get("image_processor_type")), **cfg}
    return preprocess_from(cfg)


def class_ids(names: list[str], id2label: dict[Any, Any] | None) -> list[int]:
    """Each class subfolder's class index in the model: its ``id2label`` name, or an index written as a number.

    Example:
        >>> class_ids(["0", "2"], None)
        [0, 2]
    """
    by_name = {str(v): int(k) for k, v in (id2label or {}).items() if str(k).lstrip("-").isdigit()}
    out = []
    for n in names:
        if n in by_name:
            out.append(by_name[n])
        elif n.isdigit() and (not by_name or int(n) in by_name.values()):
            out.append(int(n))
        else:
            known = ", ".join(sorted(by_name)[:20]) or "none"
            raise DataError(f"class subfolder {n!r} is not one of the model's classes: name the subfolders by the "
                            f"config's id2label ({known}) or by class index")
    return out


__all__ = ["PREPROCESSOR", "class_ids", "preprocess_from", "processor_defaults", "read_preprocess"]

"""torchvision and timm classifiers by architecture name, with the user's weights file and image folder.

Weights come only from the file (``weights_only`` / safetensors, never a download); the class count is
read from the weights' classifier (the last 2-D ``*.weight``), so a 4-class fine-tune loads as 4 classes.
Images are preprocessed with the ref's ``preprocess`` ({resize, crop, mean, std}) or else timm's
pretrained config for that architecture, or else ImageNet's usual 256/224 and mean/std. The metric is
accuracy when the folder has class subfolders, else top-1 agreement with the float model. A ``train`` folder
(for training steps) is read the same way; its class subfolders are labelled by the eval folder's class
names, and its images whose decoded pixels are also in the eval folder are dropped.

Example:
    >>> from modelpress.optimize.sources import get_source, parse_model_ref  # doctest: +SKIP
    >>> ref = parse_model_ref("torchvision:resnet18", weights="r18.safetensors",
    ...                       data={"eval": "images/"})  # doctest: +SKIP
    >>> get_source("torchvision").load(ref).spec.metric  # doctest: +SKIP
    'accuracy'
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modelpress.errors import DataError, ModelLoadError, UnknownModelError
from modelpress.optimize.limits import (
    check_batch_bytes,
    check_image_data,
    check_preprocess_sides,
    current_limits,
    image_row_bytes,
)
from modelpress.optimize.sources.base import LoadedModel, ModelSource
from modelpress.optimize.sources.common import tiled_input
from modelpress.optimize.sources.data import (
    TrainRows,
    align_class_labels,
    check_labels,
    image_files,
    make_task_data,
    read_images,
)
from modelpress.optimize.sources.data_checks import IMAGENET
from modelpress.optimize.sources.ref import ModelRef
from modelpress.optimize.spec import ModelSpec
from modelpress.optimize.weights import load_weights, read_state_dict

MAX_WEIGHTS_BYTES = 4 * 1024**3


def import_torchvision() -> Any:
    """Import torchvision beside the CPU torch.

    The registry's torchvision 0.28.0 is a CUDA build whose compiled ops cannot load here; its import then
    fails registering fakes for ``torchvision::nms``. Declaring the two op schemas first lets the pure
    Python parts (the classification models) import; the detection ops stay unusable.
    """
    try:
        import torchvision  # noqa: F401
    except RuntimeError:
        _declare_torchvision_ops()
        import torchvision
    return torchvision


_DECLARED: list[Any] = []


def _declare_torchvision_ops() -> None:
    if _DECLARED:
        return
    import sys

    for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[k]  # a failed import leaves half-initialised modules behind
    lib = torch.library.Library("torchvision", "DEF")
    for schema in ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                   "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"):
        try:
            lib.define(schema)
        except RuntimeError:
            pass  # already defined by an earlier (partial) import
    _DECLARED.append(lib)  # the Library object must stay alive or the definitions go away


def num_classes_of(state_dict: dict[str, torch.Tensor], where: str) -> int:
    """Classes = rows of the last 2-D ``*.weight`` (the classifier) in the state dict.

    Example:
        >>> num_classes_of({"conv.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(4, 8)}, "w")
        4
    """
    for k in reversed(list(state_dict)):
        v = state_dict[k]
        if k.endswith("weight") and v.ndim == 2:
            return int(v.shape[0])
    raise ModelLoadError(f"{where}: no classifier weight (a 2-D '*.weight') found to read the class count from")


def check_image_folders(ref: ModelRef, pre: dict[str, Any]) -> None:
    """Refuse image folders and latency batches too large once decoded: counts × crop only, nothing read.

    Example:
        >>> check_image_folders(ref, {"resize": 256, "crop": 224})  # doctest: +SKIP
    """
    assert ref.data
    limits = current_limits()
    crop = int(pre["crop"])
    for folder in (ref.data.eval, ref.data.calibration, ref.data.train):
        if folder:
            files, _ = image_files(folder)
            check_image_data(len(files), crop, f"image folder {folder}", limits)
    check_batch_bytes(max(ref.latency_batches), image_row_bytes(crop), "the largest latency batch", limits)


class VisionSource(ModelSource):
    """``torchvision:NAME`` / ``timm:NAME`` image classifiers."""

    def check(self, ref: ModelRef) -> list[str]:
        problems = super().check(ref)
        if self.kind == "torchvision" and not problems:
            try:
                names = import_torchvision().models.list_models(module=import_torchvision().models)
            except Exception:  # noqa: BLE001 - the build below gives the real error
                names = []
            if names and ref.name not in names:
                problems.append(f"torchvision has no classification model {ref.name!r}")
        return problems

    def _create(self, name: str, num_classes: int) -> nn.Module:
        if self.kind == "torchvision":
            tv = import_torchvision()
            try:
                return tv.models.get_model(name, weights=None, num_classes=num_classes)
            except (ValueError, KeyError) as e:
                raise UnknownModelError(f"torchvision has no model {name!r} ({e})") from None
        import_torchvision()  # timm imports torchvision
        import timm

        if not timm.is_model(name):
            raise UnknownModelError(f"timm has no model {name!r}")
        return timm.create_model(name, pretrained=False, num_classes=num_classes)

    def build(self, ref: ModelRef) -> nn.Module:
        """The architecture with as many classes as the weights file has (no weights loaded)."""
        assert ref.weights
        sd = read_state_dict(ref.weights, max_bytes=MAX_WEIGHTS_BYTES)
        return self._create(ref.name, num_classes_of(sd, ref.weights)).eval()

    def preprocess(self, ref: ModelRef) -> dict[str, Any]:
        """``{resize, crop, mean, std}``: the ref's, over timm's pretrained config or ImageNet's; sides within
        ``max_image_side`` (a crop of 4096 makes every image 200 MB of floats).

        Example:
            >>> VisionSource("torchvision").preprocess(ref)["crop"]  # doctest: +SKIP
            224
        """
        pre = dict(IMAGENET)
        if self.kind == "timm":
            import timm

            cfg = timm.get_pretrained_cfg(ref.name)
            if cfg is not None:
                size = int(cfg.input_size[-1])
                pre = {"resize": int(round(size / float(cfg.crop_pct or 0.875))), "crop": size,
                       "mean": list(cfg.mean), "std": list(cfg.std)}
        return self.checked_preprocess(pre, ref.preprocess)

    @staticmethod
    def checked_preprocess(base: dict[str, Any], override: dict[str, Any] | None) -> dict[str, Any]:
        """``base`` under the ref's ``override`` keys, checked: 3 means and stds, whole sides within
        ``max_image_side``, crop within resize.

        Example:
            >>> VisionSource.checked_preprocess(dict(IMAGENET), {"crop": 64})["resize"]
            64
        """
        pre = dict(base)
        if override:
            unknown = set(override) - {"resize", "crop", "mean", "std"}
            if unknown:
                raise DataError(f"preprocess: unknown key(s) {sorted(unknown)}; allowed: resize, crop, mean, std")
            pre.update(override)
            if "crop" in override and "resize" not in override:
                pre["resize"] = pre["crop"]
        for k in ("mean", "std"):
            if not (isinstance(pre[k], (list, tuple)) and len(pre[k]) == 3):
                raise DataError(f"preprocess.{k} must be 3 numbers (R, G, B)")
        try:
            resize, crop = int(pre["resize"]), int(pre["crop"])
        except (TypeError, ValueError):
            raise DataError("preprocess: resize and crop must be whole numbers of pixels") from None
        check_preprocess_sides(resize, crop, current_limits())
        if crop > resize or crop < 1:
            raise DataError(f"preprocess: need 1 <= crop <= resize (got crop {crop}, resize {resize})")
        return pre

    def check_decoded_size(self, ref: ModelRef, pre: dict[str, Any]) -> None:
        """Refuse image folders and latency batches too large once decoded: counts × crop only, nothing read.

        Example:
            >>> VisionSource("torchvision").check_decoded_size(ref, {"resize": 256, "crop": 224})  # doctest: +SKIP
        """
        check_image_folders(ref, pre)

    def load(self, ref: ModelRef) -> LoadedModel:
        assert ref.weights and ref.data
        # The data's decoded size first: header arithmetic, before weights or images take any memory.
        pre = self.preprocess(ref)
        self.check_decoded_size(ref, pre)
        sd = read_state_dict(ref.weights, max_bytes=MAX_WEIGHTS_BYTES)
        classes = num_classes_of(sd, ref.weights)
        model = self._create(ref.name, classes)
        load_weights(model, sd)
        model.eval()
        x, y, names = read_images(ref.data.eval, pre)
        check_labels(y, classes, f"image folder {ref.data.eval}")
        calib = None
        if ref.data.calibration:
            cx, cy, _ = read_images(ref.data.calibration, pre)
            check_labels(cy, classes, f"image folder {ref.data.calibration}")
            calib = ((cx,), cy)
        train = None
        if ref.data.train:
            tx, ty, train_names = read_images(ref.data.train, pre)
            where = f"image folder {ref.data.train}"
            ty = align_class_labels(ty, train_names, names, where)
            check_labels(ty, classes, where)
            # Keyed by decoded pixels: the same image bytes decode the same, and so do copies re-encoded
            # losslessly or cropped to the same pixels.
            train = TrainRows((tx,), ty, where)
        td = make_task_data((x,), y, calib, what=f"image folder {ref.data.eval}", train=train)
        metric = ref.metric or ("accuracy" if y is not None else "top1_agreement")
        if metric == "accuracy" and y is None:
            raise DataError(f"metric 'accuracy' needs labels: put the images of {ref.data.eval} in class subfolders")
        spec = ModelSpec(
            name=ref.display_name, version=1, build=lambda: self.build(ref), data=lambda: td, metric=metric,
            make_input=tiled_input(td.eval_inputs), latency_batches=ref.latency_batches,
            description=f"{self.kind} {ref.name}, {classes} classes; {td.description}",
            extra={"source": self.kind, "num_classes": classes, "preprocess": pre, "class_names": names,
                   "eval_batch_size": 64},
        )
        return LoadedModel(model, spec)


__all__ = ["VisionSource", "check_image_folders", "import_torchvision", "num_classes_of"]

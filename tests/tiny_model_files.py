"""Tiny files that stand in for a user's model at submit: headers, configs and archive layouts, no weights.

The submit checks (``optimize.sources.submit_*``) read only these parts of a model's files, so the
tests of those checks and of staging (``tests/test_intake.py``, ``tests/optimize/sources/test_submit_*.py``)
write them here in milliseconds, without torch.

Example:
    >>> folder = hf_folder(tmp_path)  # doctest: +SKIP
    >>> sorted(p.name for p in folder.iterdir())  # doctest: +SKIP
    ['config.json', 'model.safetensors', 'vocab.txt']
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path


_ITEMSIZE = {"F32": 4, "F64": 8, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}


def safetensors_file(path: Path, tensors: dict[str, list[int]], dtypes: dict[str, str] | None = None) -> Path:
    """A valid safetensors file of zero-filled tensors with these shapes (no torch needed): float32, except
    ``labels`` (int64, class indices) and any named in ``dtypes`` (safetensors dtype names, e.g. ``"F64"``)."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        dtype = (dtypes or {}).get(name, "I64" if name == "labels" else "F32")
        n = _ITEMSIZE[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * offset)
    return path


def hf_folder(root: Path, **config: object) -> Path:
    """``root/bert``: a BERT sequence classifier's config (3 labels, ``config`` entries added), weights, vocab."""
    folder = root / "bert"
    folder.mkdir()
    cfg = {"model_type": "bert", "architectures": ["BertForSequenceClassification"],
           "id2label": {"0": "sports", "1": "weather", "2": "music"}, **config}
    (folder / "config.json").write_text(json.dumps(cfg))
    safetensors_file(folder / "model.safetensors", {"classifier.weight": [3, 4]})
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\ngoal\n")
    return folder


def pt2_file(path: Path, *, use_pickle: bool = False, inputs: tuple[str, ...] = ("features",)) -> Path:
    """The layout torch.export.save writes (one weight, no nodes), reduced to what the submit check reads."""
    program = {"graph_module": {"graph": {"nodes": []}, "signature": {"input_specs": [
        {"parameter": {"arg": {"name": "p_w"}, "parameter_name": "w"}},
        *({"user_input": {"arg": {"as_tensor": {"name": n}}}} for n in inputs)], "output_specs": []}}}
    meta = {"device": {"type": "cpu"}, "layout": 7, "sizes": [{"as_int": 4}], "strides": [{"as_int": 1}],
            "storage_offset": {"as_int": 0}}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("m/archive_version", "0")
        zf.writestr("m/models/model.json", json.dumps(program))
        zf.writestr("m/data/weights/model_weights_config.json", json.dumps(
            {"config": {"w": {"path_name": "weight_0", "use_pickle": use_pickle, "tensor_meta": meta}}}))
        zf.writestr("m/data/constants/model_constants_config.json", json.dumps({"config": {}}))
        zf.writestr("m/data/weights/weight_0", b"\0" * 16)
    return path

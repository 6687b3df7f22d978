"""The interface every source shares (``sources.base``): the files a ref names, the content id, step support."""

from __future__ import annotations

from pathlib import Path

from modelpress.optimize.sources import parse_model_ref
from modelpress.optimize.sources.base import ModelSource


def _ref(tmp_path: Path, train: str | None):  # type: ignore[no-untyped-def]
    (tmp_path / "m.pt2").write_bytes(b"program")
    (tmp_path / "eval.npz").write_bytes(b"eval rows")
    data = {"eval": str(tmp_path / "eval.npz")} | ({"train": str(tmp_path / train)} if train else {})
    return parse_model_ref(f"export:{tmp_path / 'm.pt2'}", data=data)


def test_the_train_file_is_one_of_the_files_a_model_comes_from(tmp_path):
    (tmp_path / "train.npz").write_bytes(b"train rows")
    assert ModelSource("export").files(_ref(tmp_path, "train.npz"))[-1] == ("train data", str(tmp_path / "train.npz"))
    assert "train data" not in dict(ModelSource("export").files(_ref(tmp_path, None)))
    assert ModelSource("export").check(_ref(tmp_path, "missing.npz")) == [
        f"train data {tmp_path / 'missing.npz'} does not exist"]


def test_the_content_id_changes_with_the_train_file_and_its_content(tmp_path):
    src = ModelSource("export")
    (tmp_path / "a.npz").write_bytes(b"train rows")
    (tmp_path / "b.npz").write_bytes(b"other train rows")
    without, with_a, with_b = (src.content_id(_ref(tmp_path, t)) for t in (None, "a.npz", "b.npz"))
    assert len({without, with_a, with_b}) == 3
    (tmp_path / "a.npz").write_bytes(b"other train rows")  # a's content is now b's: the id follows content
    assert src.content_id(_ref(tmp_path, "a.npz")) == with_b


def test_a_source_supports_training_steps_only_when_told_the_ref_has_a_train_file():
    assert "no training set" in (ModelSource("hf").supports("finetune") or "")
    assert ModelSource("hf").supports("finetune", has_train=True) is None
    assert ModelSource("registered").supports("qat") is None

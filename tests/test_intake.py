"""Submit-time intake of own models (issue 9): staging, the reuse key, CLI/manifest fields, no torch on the way.

Tiny files (``tests.tiny_model_files``) stand in for real models: submit reads headers and configs, never
weights. Each source's own checks are tested beside it (``tests/optimize/sources/test_submit_*.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modelpress.api import weights_content_id
from modelpress.intake import content_id, localize_ref, resolve_paths, stage_ref
from modelpress.manifest import parse_manifest
from modelpress.manifest_yaml import ManifestError
from modelpress.optimize.sources import parse_model_ref
from modelpress.settings import Settings
from modelpress.store import ArtifactStore
from modelpress.zoo.builtin_weights import builtin_content_id, module_source_sha256
from tests.tiny_model_files import hf_folder, pt2_file, safetensors_file

MB = 1 << 20


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'jobs.db'}")


def test_staging_stores_each_file_once_and_a_worker_gets_the_same_folder_back(tmp_path):
    folder = hf_folder(tmp_path)
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("not staged")
    data = tmp_path / "eval.jsonl"
    data.write_text('{"text": "goal", "label": 0}\n')
    store = ArtifactStore(tmp_path / "store")
    ref = resolve_paths(parse_model_ref("hf:bert", data={"eval": "eval.jsonl"}), tmp_path)
    staged = stage_ref(ref, store=store, max_bytes=MB)
    assert staged.path.endswith(".tree.json") and staged.data.eval.endswith(".jsonl")
    assert sorted(store.read_tree(staged.path)) == ["config.json", "model.safetensors", "vocab.txt"]
    objects = sorted(p.name for p in (tmp_path / "store" / "inputs").iterdir())
    assert stage_ref(ref, store=store, max_bytes=MB) == staged  # same files: same refs, nothing new written
    assert sorted(p.name for p in (tmp_path / "store" / "inputs").iterdir()) == objects

    local = localize_ref(staged, store=store, cache_dir=tmp_path / "cache")
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        assert (Path(local.path) / name).read_bytes() == (folder / name).read_bytes()
    assert not (Path(local.path) / ".git").exists()
    assert Path(local.data.eval).read_bytes() == data.read_bytes()


def test_a_stored_folder_whose_file_changed_in_the_store_fails_its_hash_check(tmp_path):
    from modelpress.store import IntegrityError

    folder = hf_folder(tmp_path)
    store = ArtifactStore(tmp_path / "store")
    tree = store.put_tree(folder, prefix="inputs")
    victim = store.read_tree(tree.key)["config.json"]
    (tmp_path / "store" / victim).write_text('{"model_type": "bert", "auto_map": {}}')
    with pytest.raises(IntegrityError, match="changed or truncated"):
        store.fetch_tree(tree.key, cache_dir=tmp_path / "cache")


def test_a_folder_index_cannot_point_outside_the_store_or_the_folder(tmp_path):
    from modelpress.store import StoreError, UnsafeKeyError

    store = ArtifactStore(tmp_path / "store")
    evil = store.put_bytes(json.dumps({"_version": 1, "files": {"../../etc/x": "inputs/" + "0" * 64}}).encode(),
                           prefix="inputs", suffix=".tree.json")
    with pytest.raises(UnsafeKeyError):
        store.fetch_tree(evil.key, cache_dir=tmp_path / "cache")
    outside = store.put_bytes(json.dumps({"_version": 1, "files": {"a": "/etc/passwd"}}).encode(),
                              prefix="inputs", suffix=".tree.json")
    with pytest.raises(StoreError):
        store.fetch_tree(outside.key, cache_dir=tmp_path / "cache")


def test_the_reuse_key_changes_with_the_data_the_name_and_the_options_but_not_the_users_paths(tmp_path):
    weights = "inputs/" + "1" * 64 + ".safetensors"
    a = parse_model_ref("timm:resnet18", weights=weights, data={"eval": "inputs/" + "2" * 64 + ".tree.json"})
    assert content_id(a) != content_id(a.with_paths(data={"eval": "inputs/" + "3" * 64 + ".tree.json"}))
    assert content_id(a) != content_id(a.with_paths(name="resnet34"))
    assert content_id(a) != content_id(a.with_paths(preprocess={"resize": 32, "crop": 32}))
    b = parse_model_ref("export:/home/ann/m.pt2", data={"eval": "inputs/" + "4" * 64 + ".npz"})
    staged_b = b.with_paths(path="inputs/" + "5" * 64 + ".pt2")
    moved = parse_model_ref("export:/home/bob/copy.pt2", data={"eval": "inputs/" + "4" * 64 + ".npz"})
    assert content_id(staged_b) == content_id(moved.with_paths(path="inputs/" + "5" * 64 + ".pt2"))


def test_two_factories_loading_the_same_weights_never_share_a_reuse_key():
    w = "a" * 64
    assert weights_content_id("mlp", w) != weights_content_id("digits_cnn", w)
    assert weights_content_id("mlp", w) != w
    # The factory's code is part of the key: its module file's bytes, read without importing it.
    assert module_source_sha256("modelpress.zoo.models") is not None
    assert builtin_content_id("mlp") != builtin_content_id("digits_cnn")


def test_a_manifest_points_at_the_line_of_each_bad_own_model_field(tmp_path, settings):
    pt2_file(tmp_path / "ranker.pt2")
    safetensors_file(tmp_path / "wrong.safetensors", {"feats": [2, 4]})
    text = (
        "defaults: {recipes: [dynamic-int8], backends: [fbgemm]}\n"
        "models:\n"
        "  - model: export:ranker.pt2\n"
        "    data:\n"
        "      eval: wrong.safetensors\n"          # line 5
        "  - model: hf:no-such-folder\n"           # line 6
        "    data: {eval: e.jsonl}\n"
        "  - model: export:ranker.pt2\n"           # line 8: data missing
        "  - model: torchvision:resnet18\n"
        "    weights: w.safetensors\n"             # line 10
        "    data: {eval: imgs, calibartion: c}\n"  # line 11
    )
    with pytest.raises(ManifestError) as e:
        parse_manifest(text, settings=settings, base_dir=tmp_path, filename="m.yaml")
    lines = str(e.value).splitlines()[1:]
    assert any(ln.strip().startswith("m.yaml:5: models[0].data.eval: data file wrong.safetensors holds tensors feats")
               for ln in lines), lines
    assert any(ln.strip().startswith("m.yaml:6: models[1].model: HF model folder") for ln in lines), lines
    assert any(ln.strip().startswith("m.yaml:8: models[2]") and "needs data" in ln for ln in lines), lines
    assert any(ln.strip().startswith("m.yaml:11: models[3].data.calibartion: unknown field") for ln in lines), lines


def test_the_cli_takes_an_own_model_with_its_data_and_refuses_a_bad_data_option(tmp_path):
    from modelpress.cli import build_parser, source_options

    args = build_parser().parse_args(["submit", "--model", "hf:m", "--recipe", "dynamic-int8", "--backend", "fbgemm",
                                      "--data", "eval=e.jsonl,calibration=c.jsonl,train=t.jsonl", "--max-length", "64",
                                      "--preprocess", '{"resize": 72, "crop": 64}', "--latency-batches", "1,8"])
    assert source_options(args) == {"data": {"eval": "e.jsonl", "calibration": "c.jsonl", "train": "t.jsonl"}, "max_length": 64,
                                    "preprocess": {"resize": 72, "crop": 64}, "latency_batches": [1, 8]}
    env = {"PATH": "/usr/bin:/bin", "MODELPRESS_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-m", "modelpress", "submit", "--model", "hf:m", "--recipe", "dynamic-int8",
                          "--backend", "fbgemm", "--data", "calib=c.jsonl"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "expected eval=PATH[,calibration=PATH]" in out.stderr, out.stderr
    out = subprocess.run([sys.executable, "-m", "modelpress", "submit", "--model", f"hf:{tmp_path / 'none'}",
                          "--recipe", "dynamic-int8", "--backend", "fbgemm", "--data", "eval=e.jsonl"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "HF model folder" in out.stderr and "does not exist" in out.stderr, out.stderr


def test_checking_and_staging_own_models_never_imports_torch_or_transformers(tmp_path):
    folder = hf_folder(tmp_path)
    (tmp_path / "eval.jsonl").write_text('{"text": "goal", "label": "sports"}\n')
    pt2_file(tmp_path / "m.pt2")
    safetensors_file(tmp_path / "eval.safetensors", {"features": [2, 4]})
    code = f"""
import sys
from pathlib import Path
from modelpress.intake import resolve_paths, stage_ref
from modelpress.optimize.sources.submit import check_ref
from modelpress.optimize.sources import parse_model_ref
from modelpress.store import ArtifactStore
root = Path({str(tmp_path)!r})
refs = [parse_model_ref("hf:bert", data={{"eval": "eval.jsonl"}}),
        parse_model_ref("export:m.pt2", data={{"eval": "eval.safetensors"}}),
        parse_model_ref("torchvision:resnet18", weights="eval.safetensors", data={{"eval": "bert"}})]
problems = [check_ref(resolve_paths(r, root), max_bytes=1 << 20) for r in refs]
stage_ref(resolve_paths(refs[0], root), store=ArtifactStore(root / "store"), max_bytes=1 << 20)
print(problems[0], problems[1], len(problems[2]) > 0, sorted(m for m in ("torch", "transformers", "torchvision")
                                                              if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[] [] True []", out.stdout + out.stderr


def test_a_registered_model_given_with_data_keys_its_reuse_on_the_factory_too():
    data = {"eval": "inputs/" + "6" * 64 + ".npz"}
    mlp = parse_model_ref("mlp", weights="inputs/" + "7" * 64 + ".safetensors", data=data)
    cnn = parse_model_ref("digits_cnn", weights="inputs/" + "7" * 64 + ".safetensors", data=data)
    assert content_id(mlp) != content_id(cnn)


def test_a_workers_error_names_staged_files_by_their_role_not_by_their_content_key():
    from modelpress.intake import name_staged_files

    tree, data = "inputs/" + "06" * 32 + ".tree.json", "inputs/" + "5e" * 32 + ".jsonl"
    stored = {"path": tree, "data": {"eval": data, "calibration": None}}
    message = (f"HF folder /home/w/store-cache/trees/{'06' * 32}: config.json has 'auto_map'; "
               f"{'5e' * 32}.jsonl: label 7 in row 2 is outside the model's 3 classes")
    named = name_staged_files(message, stored)
    assert named == ("HF folder model files (model): config.json has 'auto_map'; eval data (data.eval, "
                     "5e5e5e5e5e5e5e5e5e….jsonl): label 7 in row 2 is outside the model's 3 classes")
    assert name_staged_files("nothing staged", None) == "nothing staged"


# ----------------------------------------------------------------------------- the train split
def test_a_train_file_is_staged_fetched_back_and_part_of_the_reuse_key(tmp_path):
    hf_folder(tmp_path)
    (tmp_path / "eval.jsonl").write_text('{"text": "goal", "label": 0}\n')
    (tmp_path / "train.jsonl").write_text('{"text": "rain", "label": 1}\n')
    (tmp_path / "other.jsonl").write_text('{"text": "song", "label": 2}\n')
    store = ArtifactStore(tmp_path / "store")

    def staged(train):  # type: ignore[no-untyped-def]
        data = {"eval": "eval.jsonl"} | ({"train": train} if train else {})
        return stage_ref(resolve_paths(parse_model_ref("hf:bert", data=data), tmp_path), store=store, max_bytes=MB)

    with_train = staged("train.jsonl")
    assert with_train.data.train.startswith("inputs/") and with_train.data.train.endswith(".jsonl")
    local = localize_ref(with_train, store=store, cache_dir=tmp_path / "cache")
    assert Path(local.data.train).read_bytes() == (tmp_path / "train.jsonl").read_bytes()
    keys = {staged(None).content_sha256, with_train.content_sha256, staged("other.jsonl").content_sha256}
    assert len(keys) == 3


def test_a_workers_error_names_a_staged_train_file_as_the_train_data():
    from modelpress.intake import name_staged_files

    train = "inputs/" + "7a" * 32 + ".npz"
    stored = {"path": "inputs/" + "06" * 32 + ".pt2", "data": {"eval": "inputs/" + "5e" * 32 + ".npz", "train": train}}
    named = name_staged_files(f"{'7a' * 32}.npz: label 3 in row 3 is outside the model's 3 classes", stored)
    assert named == "train data (data.train, 7a7a7a7a7a7a7a7a7a….npz): label 3 in row 3 is outside the model's 3 classes"


def test_a_manifest_takes_a_train_file_and_points_at_the_line_of_a_bad_one_or_of_a_recipe_that_needs_one(
        tmp_path, settings):
    pt2_file(tmp_path / "ranker.pt2")
    safetensors_file(tmp_path / "eval.safetensors", {"features": [2, 4]})
    safetensors_file(tmp_path / "train.safetensors", {"features": [3, 4], "labels": [3]})
    safetensors_file(tmp_path / "bad.safetensors", {"features": [3, 4], "labels": [3, 2]})
    good = ("models:\n"
            "  - model: export:ranker.pt2\n"
            "    data: {eval: eval.safetensors, train: train.safetensors}\n"
            "    recipes: [qat-int8]\n"
            "    backends: [fbgemm]\n")
    (request,) = parse_manifest(good, settings=settings, base_dir=tmp_path, filename="m.yaml").requests
    assert request.ref.data.train == str(tmp_path / "train.safetensors")
    text = ("defaults: {recipes: [qat-int8], backends: [fbgemm]}\n"
            "models:\n"
            "  - model: export:ranker.pt2\n"
            "    data:\n"
            "      eval: eval.safetensors\n"
            "      train: bad.safetensors\n"          # line 6
            "  - model: export:ranker.pt2\n"
            "    data: {eval: eval.safetensors}\n"
            "    recipes: [qat-int8]\n")              # line 9: qat needs a train file
    with pytest.raises(ManifestError) as e:
        parse_manifest(text, settings=settings, base_dir=tmp_path, filename="m.yaml")
    lines = str(e.value).splitlines()[1:]
    assert any(ln.strip().startswith("m.yaml:6: models[0].data.train: data file bad.safetensors: 'labels' must be a "
                                     "1-D integer tensor") for ln in lines), lines
    assert any(ln.strip().startswith("m.yaml:9: models[1].recipes[0]: recipe 'qat-int8': step 'qat' trains the model")
               and "add data: {train: ...}" in ln for ln in lines), lines

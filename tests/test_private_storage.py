"""What modelpress stores is the service's alone, and job rows never hold where a submitter keeps files (issue 20 item 6).

Files in the artifact store and the workers' caches are 0640 and the folders modelpress creates there 0750,
set explicitly, whatever umask the caller left; the processes run with umask 0027. Rows and manifests name
the user's files relative to the manifest (or the working directory), never by the submitter's absolute path.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import stat
import textwrap
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from modelpress.api import Producer
from modelpress.cli import _rows, wait_for
from modelpress.intake import resolve_paths, row_name
from modelpress.models_db import migrate
from modelpress.optimize.sources import parse_model_ref
from modelpress.settings import Settings
from modelpress.store import ArtifactStore
from modelpress.worker_store import WORKER_FOLDERS, cache_dir, fetch_model_ref, worker_dir
from tests.conftest import settings_from_env


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _modes(root: Path) -> dict[str, int]:
    """Every file and folder under ``root`` (itself included) → its permission bits."""
    out = {".": _mode(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            out[str(p.relative_to(root))] = _mode(p)
    return out


def _assert_private(root: Path, *, skip: tuple[str, ...] = ()) -> int:
    """Files 0640/0600, folders 0750/0700 under ``root``; returns how many entries were checked."""
    modes = {k: v for k, v in _modes(root).items() if not k.startswith(skip)}
    bad = {k: oct(v) for k, v in modes.items()
           if v not in ((0o750, 0o700) if (root / k).is_dir() else (0o640, 0o600))}
    assert not bad, f"not private under {root}: {bad}"
    return len(modes)


@pytest.fixture
def careless_umask():
    """The umask a careless caller might leave: every bit allowed. Explicit modes must not depend on it."""
    old = os.umask(0)
    yield
    os.umask(old)


def _safetensors(path: Path, tensors: dict[str, list[int]]) -> Path:
    header, offset = {}, 0
    for name, shape in tensors.items():
        n = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * offset)
    return path


def _hf_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": [
        "BertForSequenceClassification"], "id2label": {"0": "sports", "1": "weather", "2": "music"}}))
    _safetensors(folder / "model.safetensors", {"classifier.weight": [3, 4]})
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\ngoal\n")
    return folder


# ----------------------------------------------------------------------------- modes
def test_staged_files_folders_and_indexes_are_private_whatever_the_callers_umask(tmp_path, careless_umask):
    user = _hf_folder(tmp_path / "user" / "bert")
    store = ArtifactStore(tmp_path / "store")
    store.put_file(user / "config.json", prefix="inputs")
    store.put_bytes(b"bytes", prefix="results", suffix=".json")
    tree = store.put_tree(user, prefix="inputs")
    assert _assert_private(tmp_path / "store") >= 7  # root, inputs/, results/, 3 files, the index, ...

    # What a worker builds from them: a rebuilt folder, and cached copies from a remote store.
    store.fetch_tree(tree.key, cache_dir=tmp_path / "cache")
    remote = ArtifactStore(f"memory://mp-private-{uuid.uuid4().hex[:10]}")
    obj = remote.put_file(user / "vocab.txt", prefix="inputs")
    remote.fetch(obj.uri, cache_dir=tmp_path / "cache")
    remote.fetch_tree(remote.put_tree(user, prefix="inputs").uri, cache_dir=tmp_path / "cache")
    assert _assert_private(tmp_path / "cache") >= 8


def test_artifacts_results_and_indexes_a_worker_writes_are_private(tmp_path, careless_umask):
    import torch

    from modelpress.optimize.artifacts import atomic_write_json, put_json_object, save_artifact_object

    folder = worker_dir(Settings(home=tmp_path / "home"))
    assert all(_mode(folder / name) == 0o750 for name in WORKER_FOLDERS)
    save_artifact_object(folder / "artifacts", torch.nn.Linear(2, 2), {"doc": 1})
    put_json_object(folder / "results", {"a": 1})
    atomic_write_json(folder / "index" / "k.json", {"key": "k"})
    assert _assert_private(folder) >= 14
    assert _mode(cache_dir(Settings(home=tmp_path / "home"))) == 0o750


# ----------------------------------------------------------------------------- names in rows
def test_a_row_names_a_file_relative_to_the_manifest_folder_or_by_its_own_name_outside_it(tmp_path):
    team = tmp_path / "home" / "alice" / "team"
    assert row_name(str(team / "models" / "x"), team) == "models/x"
    assert row_name("models/x/", team) == "models/x"
    assert row_name(str(tmp_path / "shared" / "y"), team) == "y"
    assert row_name("../../elsewhere/z.pt2", team) == "z.pt2"
    assert row_name(".", team) == "team"
    ref = resolve_paths(parse_model_ref(f"export:{team / 'm.pt2'}", data={"eval": "d.npz"}), team)
    assert (ref.path, ref.data.eval, ref.name) == (str(team / "m.pt2"), str(team / "d.npz"), "m.pt2")


@pytest.fixture
def producer(tmp_path):
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    migrate.upgrade(db)
    p = Producer(Settings(home=tmp_path / "service", database_url=db))
    p._app = SimpleNamespace(send_task=lambda *a, **k: None)  # rows are the subject; the broker is not
    yield p
    p.close()


def _all_rows(producer: Producer) -> list[dict]:
    from sqlalchemy import text

    with producer.sessions() as s:
        return [dict(r._mapping) for table in ("jobs", "batches")
                for r in s.execute(text(f"SELECT * FROM {table}"))]  # every column, whatever is added later


def test_a_submitted_manifest_and_a_command_line_model_leave_no_absolute_submitter_path_in_any_row(
        producer, tmp_path, monkeypatch):
    from modelpress.manifest import submit_manifest

    team = tmp_path / "alice-home" / "team"
    _hf_folder(team / "models" / "bert")
    _hf_folder(team / "models" / "bert-abs")
    (team / "data").mkdir()
    (team / "data" / "eval.jsonl").write_text('{"text": "goal", "label": 0}\n{"text": "rain", "label": 1}\n')
    _safetensors(team / "weights" / "mlp.safetensors", {"fc1.weight": [4, 4]})
    manifest = team / "manifest.yaml"
    manifest.write_text(textwrap.dedent(f"""\
        name: team-night
        defaults: {{recipes: [dynamic-int8], backends: [fbgemm]}}
        models:
          - model: hf:models/bert
            data: {{eval: data/eval.jsonl}}
          - model: hf:{team / "models" / "bert-abs"}
            data: {{eval: {team / "data" / "eval.jsonl"}}}
          - model: mlp
            weights: {team / "weights" / "mlp.safetensors"}
    """))
    monkeypatch.chdir(tmp_path)  # submitted from elsewhere: only the manifest's folder counts
    assert submit_manifest(producer, manifest) == 0
    monkeypatch.chdir(team)  # the command line: relative to the working directory
    producer.submit(model=f"hf:{team / 'models' / 'bert'}", data={"eval": str(team / "data" / "eval.jsonl")},
                    recipe="dynamic-int8", backend="fbgemm")

    rows = _all_rows(producer)
    assert len(rows) == 5  # four jobs and the batch
    text = json.dumps(rows, default=str)
    assert "alice-home" not in text, [k for r in rows for k, v in r.items() if "alice-home" in str(v)]
    refs = [json.loads(r["model_ref"]) if isinstance(r.get("model_ref"), str) else r.get("model_ref")
            for r in rows if "model_ref" in r]
    assert sorted(ref["name"] for ref in refs if ref) == ["models/bert", "models/bert", "models/bert-abs"]
    assert sorted(r["model_name"] for r in rows if "model_name" in r) == [
        "hf:bert", "hf:bert", "hf:bert-abs", "mlp"]
    (batch,) = [r for r in rows if "kind" in r]
    assert batch["source"] == "manifest.yaml"
    # The staged files are the store's, and private to the service.
    _assert_private(Path(producer.settings.effective_artifact_store))


# ----------------------------------------------------------------------------- a real job
def test_a_real_job_leaves_only_private_files_and_its_rows_name_no_submitter_path(queue, tmp_path):
    from sqlalchemy import create_engine, text

    from tests.own_models_fixtures import build_export

    env, workers = queue
    settings = settings_from_env(env)
    proc = workers.start("fbgemm")
    umask = next(ln for ln in Path(f"/proc/{proc.pid}/status").read_text().splitlines() if ln.startswith("Umask:"))
    assert umask.split()[1] == "0027"  # the worker process runs with the service umask

    team = tmp_path / "alice-home" / "team"
    (team / "models").mkdir(parents=True)
    built = build_export(team / "models")
    manifest = team / "manifest.yaml"
    manifest.write_text(json.dumps({"defaults": {"recipes": ["dynamic-int8"], "backends": ["fbgemm"]}, "models": [
        {"model": built.model, "data": {"eval": str(built.eval), "calibration": str(built.calibration)}}]}))
    sub = subprocess.run([sys.executable, "-m", "modelpress", "submit", str(manifest)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert sub.returncode == 0, sub.stderr[-2000:]
    (row,) = wait_for(settings, [r["id"] for r in _rows(settings, limit=10)], timeout=600, quiet=True)
    assert row["status"] in ("succeeded", "rejected"), row["error"]

    engine = create_engine(settings.effective_database_url)
    with engine.connect() as c:
        rows = [dict(r._mapping) for t in ("jobs", "batches") for r in c.execute(text(f"SELECT * FROM {t}"))]
    engine.dispose()
    assert "alice-home" not in json.dumps(rows, default=str)
    assert row["model_name"] == "export:ranker.pt2" and row["model_ref"]["name"] == "models/ranker.pt2"

    store = Path(settings.effective_artifact_store)
    assert Path(row["artifact_uri"]).is_relative_to(store)
    checked = _assert_private(store) + _assert_private(settings.home / "store-cache")
    assert checked >= 12  # inputs, float, artifacts, results, index objects and their folders
    lock_dir = settings.timing_lock_dir
    assert _mode(lock_dir) == 0o750 and _mode(lock_dir / "modelpress-timing.lock") == 0o660
    # Reloading the result from the store works for the service (its own user), as before.
    local = fetch_model_ref(settings, row["model_ref"])
    assert Path(local.path).is_file()


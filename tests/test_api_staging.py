"""``submit_batch`` stages each weights file once, before it opens the write transaction."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import torch

from modelpress.api import Producer
from modelpress.cli import ensure_db
from modelpress.settings import Settings
from modelpress.store import ArtifactStore


def _write_lock_is_free(db: Path) -> bool:
    """Can another process take SQLite's write lock right now (no waiting)?"""
    con = sqlite3.connect(db, timeout=0)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.rollback()
        return True
    except sqlite3.OperationalError:  # "database is locked": a writer holds it
        return False
    finally:
        con.close()


def test_each_weights_file_is_hashed_and_copied_once_and_never_while_the_write_lock_is_held(tmp_path, monkeypatch):
    settings = Settings(home=tmp_path / "home")
    ensure_db(settings)
    db = Path(settings.effective_database_url.removeprefix("sqlite:///"))
    files = []
    for name, seed in (("a.pt", 0), ("b.pt", 1)):
        path = tmp_path / name
        torch.save({"w": torch.randn(8, generator=torch.Generator().manual_seed(seed))}, path)
        files.append(path)

    staged: list[tuple[str, bool]] = []
    real_put_file = ArtifactStore.put_file

    def spy(self, path, *args, **kwargs):  # type: ignore[no-untyped-def]
        staged.append((Path(path).name, _write_lock_is_free(db)))
        return real_put_file(self, path, *args, **kwargs)

    monkeypatch.setattr(ArtifactStore, "put_file", spy)
    producer = Producer(settings)
    try:
        reqs = [producer.validate(model="mlp", recipe=r, backend=b, weights=str(f))
                for f in files for r in ("dynamic-int8", "static-int8") for b in ("fbgemm", "qnnpack")]
        sub = producer.submit_batch(reqs, name="many recipes, two files", kind="manifest")
    finally:
        producer.close()

    assert len(sub.job_ids) == 8
    assert sorted(staged) == [("a.pt", True), ("b.pt", True)]  # once per file, the lock free each time
    from modelpress.cli import _rows

    uris = {r["model_weights_uri"] for r in _rows(settings, ids=sub.job_ids, limit=None)}
    assert len(uris) == 2 and None not in uris

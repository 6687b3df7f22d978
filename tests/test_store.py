"""The artifact store: content-addressed, atomic, hash-checked, confined — on a folder and on fsspec."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from pathlib import Path

import pytest

from modelpress.settings import Settings
from modelpress.store import (
    ArtifactStore,
    IntegrityError,
    MissingObjectError,
    StoreError,
    UnsafeKeyError,
)
from modelpress.worker_store import fetch_weights, publish_artifact, worker_dir


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path) -> ArtifactStore:
    """The same behaviour is required of a local folder and of a remote (fsspec) store."""
    if request.param == "local":
        return ArtifactStore(str(tmp_path / "store"))
    return ArtifactStore(f"memory://mp-test-{uuid.uuid4().hex[:10]}")


def _raw_overwrite(store: ArtifactStore, key: str, data: bytes) -> None:
    # Corrupt an object behind the store's back (a disk fault, a person editing the folder).
    if store.is_local:
        Path(store.root, key).write_bytes(data)
    else:
        store._fs.pipe_file(f"{store.root}/{key}", data)


def test_a_stored_file_is_named_by_its_sha256_and_reads_back_identical(store, tmp_path):
    src = tmp_path / "w.safetensors"
    src.write_bytes(b"some weights" * 1000)
    obj = store.put_file(src, prefix="inputs")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert obj.sha256 == digest and obj.key == f"inputs/{digest}.safetensors" and obj.size == src.stat().st_size
    assert store.key_for(obj.uri) == obj.key
    assert store.read_bytes(obj.uri) == src.read_bytes()
    assert store.fetch(obj.uri, cache_dir=tmp_path / "cache").read_bytes() == src.read_bytes()


def test_storing_the_same_bytes_twice_writes_once_and_leaves_no_temp_files(store, tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"x" * 10)
    b.write_bytes(b"x" * 10)
    first, second = store.put_file(a, prefix="inputs"), store.put_file(b, prefix="inputs")
    assert first == second
    if store.is_local:
        names = sorted(p.name for p in Path(store.root).rglob("*") if p.is_file())
    else:
        names = sorted(p.rsplit("/", 1)[-1] for p in store._fs.find(store.root))
    assert names == [f"{first.sha256}.pt"]


def test_bytes_that_no_longer_match_their_hash_raise_a_clear_integrity_error(store, tmp_path):
    src = tmp_path / "w.pt"
    src.write_bytes(b"good weights")
    obj = store.put_file(src, prefix="inputs")
    _raw_overwrite(store, obj.key, b"evil weights")
    with pytest.raises(IntegrityError, match=r"is corrupt: its sha256 is .* expected "):
        store.read_bytes(obj.key)
    with pytest.raises(IntegrityError, match="is corrupt"):
        store.fetch(obj.uri, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / obj.key).exists()  # nothing unverified is left for the next reader


def test_a_fetch_checks_against_the_hash_the_job_row_recorded(store, tmp_path):
    obj = store.put_bytes(b"weights", prefix="inputs", suffix=".pt")
    with pytest.raises(IntegrityError):
        store.fetch(obj.key, cache_dir=tmp_path / "cache", sha256="0" * 64)


@pytest.mark.parametrize("ref", ["../secret", "inputs/../../etc/passwd", "/etc/passwd", "", ".hidden/x",
                                 "inputs/.tmp-x", "inputs\\..\\x", "s3://other-bucket/inputs/x.pt",
                                 "file:///etc/passwd", "inputs//x", "inputs/x\x00.pt"])
def test_keys_that_would_leave_the_store_are_refused(store, ref):
    with pytest.raises(UnsafeKeyError):
        store.key_for(ref)
    with pytest.raises(UnsafeKeyError):
        store.read_bytes(ref, sha256="0" * 64)


def test_a_uri_of_another_store_with_the_same_scheme_is_refused(store, tmp_path):
    other = ArtifactStore(str(tmp_path / "other")) if store.is_local else ArtifactStore("memory://some-other-root")
    obj = other.put_bytes(b"elsewhere", prefix="inputs")
    with pytest.raises(UnsafeKeyError, match="outside the artifact store"):
        store.key_for(obj.uri)


def test_a_missing_object_says_which_one(store, tmp_path):
    with pytest.raises(MissingObjectError, match="no object"):
        store.fetch("inputs/" + "a" * 64 + ".pt", cache_dir=tmp_path / "cache")


def test_a_write_that_fails_midway_leaves_neither_the_object_nor_a_temp_file(store):
    class Exploding(io.BytesIO):
        def read(self, n: int = -1) -> bytes:
            if self.tell() > 0:
                raise OSError("disk went away")
            return super().read(4)

    key = ArtifactStore.content_key("b" * 64, prefix="inputs")
    with pytest.raises(OSError, match="disk went away"):
        store._write_atomically(key, Exploding(b"12345678"))
    assert not store.exists(key)
    leftovers = ([p for p in Path(store.root).rglob("*") if p.is_file()] if store.is_local
                 else store._fs.find(store.root))
    assert list(leftovers) == []


def test_a_remote_cache_copy_that_was_damaged_is_fetched_again(tmp_path):
    store = ArtifactStore(f"memory://mp-test-{uuid.uuid4().hex[:10]}")
    obj = store.put_bytes(b"the weights", prefix="inputs", suffix=".pt")
    cached = store.fetch(obj.uri, cache_dir=tmp_path)
    cached.write_bytes(b"damaged!!!!")
    assert store.fetch(obj.uri, cache_dir=tmp_path).read_bytes() == b"the weights"


def test_a_url_whose_filesystem_is_unknown_gives_a_clear_error():
    with pytest.raises(StoreError, match="cannot be opened"):
        ArtifactStore("nosuchfs://bucket/prefix")


def test_the_producer_stages_weights_and_the_worker_fetches_them_hash_checked_through_a_remote_store(tmp_path):
    from modelpress.api import Producer

    settings = Settings(home=tmp_path / "home", artifact_store=f"memory://mp-test-{uuid.uuid4().hex[:10]}")
    src = tmp_path / "w.safetensors"
    src.write_bytes(os.urandom(4096))
    producer = Producer(settings)
    try:
        uri, digest = producer._stage_weights(str(src))
    finally:
        producer.close()
    assert uri.startswith("memory://") and uri.endswith(f"inputs/{digest}.safetensors")
    local = fetch_weights(settings, uri, sha256=digest)
    assert Path(local).read_bytes() == src.read_bytes()
    assert Path(local).is_relative_to(settings.home / "store-cache")
    with pytest.raises(IntegrityError):
        fetch_weights(settings, uri, sha256=hashlib.sha256(b"something else").hexdigest())


def test_a_worker_publishes_artifacts_to_a_remote_store_and_keeps_rejected_ones_apart(tmp_path):
    settings = Settings(home=tmp_path / "home", artifact_store=f"memory://mp-test-{uuid.uuid4().hex[:10]}")
    art = tmp_path / "a.mpz"
    art.write_bytes(b"artifact bytes")
    store = ArtifactStore.from_settings(settings)
    promoted = publish_artifact(settings, str(art))
    rejected = publish_artifact(settings, str(art), rejected=True)
    assert store.key_for(promoted).startswith("artifacts/") and store.key_for(rejected).startswith("rejected/")
    assert store.read_bytes(promoted) == b"artifact bytes"
    assert worker_dir(settings) == settings.home / "store-cache"


def test_with_a_local_store_the_pipeline_writes_into_the_store_and_paths_are_kept(tmp_path):
    settings = Settings(home=tmp_path / "home")
    assert worker_dir(settings) == Path(settings.effective_artifact_store)
    assert publish_artifact(settings, "/somewhere/a.mpz") == "/somewhere/a.mpz"


def test_a_corrupt_object_of_the_right_size_is_replaced_when_the_file_is_stored_again(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    src = tmp_path / "w.safetensors"
    src.write_bytes(b"weights" * 1000)
    obj = store.put_file(src, prefix="inputs")
    path = Path(store.uri(obj.key))
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        store.read_bytes(obj.key)
    again = store.put_file(src, prefix="inputs")  # submitting again repairs it
    assert again.key == obj.key and store.read_bytes(obj.key) == src.read_bytes()

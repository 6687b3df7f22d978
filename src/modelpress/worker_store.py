"""What a worker does with the artifact store: where it writes, how it gets a job's inputs, where results go.

Split from ``store`` (which knows objects and keys, not settings or jobs) so that ``store`` imports
nothing of the job layer: ``fetch_model_ref`` needs ``intake``, which itself stages through ``store``.

Every folder a worker writes into is created private to the service's user and group before a job runs
(``WORKER_FOLDERS``, ``filemodes.DIR_MODE``): the pipeline's own ``mkdir`` calls then find them, and
nothing depends on the umask the worker was started with (issue 20 item 6).

Example:
    >>> from modelpress.settings import Settings
    >>> worker_dir(Settings(home="/tmp/mp-doc-ws", artifact_store="s3://b/p")).name
    'store-cache'
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelpress.filemodes import make_private_dirs
from modelpress.store import ArtifactStore, is_remote

if TYPE_CHECKING:
    from modelpress.settings import Settings

#: The folders the optimize pipeline writes into (store layout), plus ``inputs``/``trees`` where a worker of a
#: remote store caches what it fetched.
WORKER_FOLDERS = ("inputs", "trees", "float", "artifacts", "rejected", "results", "index", "onnx", "tmp", "builtin",
                  "checkpoints")


def cache_dir(settings: "Settings") -> Path:
    """The worker's local cache of fetched inputs and rebuilt folders: ``$MODELPRESS_HOME/store-cache``.

    Example:
        >>> from modelpress.settings import Settings
        >>> cache_dir(Settings(home="/tmp/mp-doc-ws")).name
        'store-cache'
    """
    return make_private_dirs(settings.home / "store-cache")


def worker_dir(settings: "Settings") -> Path:
    """The local folder the optimize pipeline writes into: the store itself when it is a folder,
    else a cache under ``MODELPRESS_HOME`` whose results are then published to the remote store.
    Its ``WORKER_FOLDERS`` exist, private, when it returns.

    Example:
        >>> from modelpress.settings import Settings
        >>> worker_dir(Settings(home="/tmp/mp-doc-ws", artifact_store="s3://b/p")) == Path("/tmp/mp-doc-ws/store-cache")
        True
    """
    location = settings.effective_artifact_store
    folder = cache_dir(settings) if is_remote(location) else ArtifactStore(location).root_path
    for name in WORKER_FOLDERS:
        make_private_dirs(folder / name)
    return folder


def fetch_weights(settings: "Settings", ref: str, *, sha256: str | None) -> str:
    """Local path of a job's staged weights, hash-checked against the job row's ``model_sha256``.

    Example:
        >>> fetch_weights(settings, job.model_weights_uri, sha256=job.model_sha256)  # doctest: +SKIP
        '/data/artifacts/inputs/3f…e1.safetensors'
    """
    store = ArtifactStore.from_settings(settings)
    return str(store.fetch(ref, sha256=sha256, cache_dir=cache_dir(settings)))


def fetch_model_ref(settings: "Settings", stored: "dict[str, Any]") -> Any:
    """A job row's ``model_ref`` (store refs) as a ``ModelRef`` whose files are local and hash-checked.

    Folders (an HF model, an image folder) are rebuilt under the worker's cache (``fetch_tree``).

    Example:
        >>> fetch_model_ref(settings, job.model_ref).path  # doctest: +SKIP
        '/home/mp/store-cache/trees/3f…e1'
    """
    from modelpress.intake import localize_ref
    from modelpress.optimize.sources import ModelRef

    return localize_ref(ModelRef.from_dict(stored), store=ArtifactStore.from_settings(settings),
                        cache_dir=cache_dir(settings))


def publish_artifact(settings: "Settings", local_path: str, *, rejected: bool = False) -> str:
    """Make a worker's artifact reachable by everyone; returns the URI a job row records.

    A local store already holds the file (the pipeline wrote it there): its path is returned as is.
    A remote store receives a content-addressed copy under ``artifacts/`` (``rejected/`` for a
    result that broke its budget, so it is never mistaken for a promoted one).

    Example:
        >>> publish_artifact(settings, "/var/mp/store-cache/artifacts/ab.mpz")  # doctest: +SKIP
        's3://bucket/modelpress/artifacts/5c…09.mpz'
    """
    store = ArtifactStore.from_settings(settings)
    if store.is_local:
        return local_path
    return store.put_file(local_path, prefix="rejected" if rejected else "artifacts").uri


__all__ = ["WORKER_FOLDERS", "cache_dir", "fetch_model_ref", "fetch_weights", "publish_artifact", "worker_dir"]

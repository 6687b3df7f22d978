"""The producer API: validate, write the job row, then publish a message carrying only the job id.

Everything that can be known at submit time is checked here, before any row exists: the model is
registered (or allow-listed), the recipe parses, the backend has a queue, the weights file exists and
is under the size limit. No torch import: submitting is cheap.

Example:
    >>> from modelpress.settings import Settings
    >>> from modelpress.api import Producer
    >>> p = Producer(Settings(home="/tmp/mp-doc"))  # doctest: +SKIP
    >>> job_id = p.submit(model="mlp", recipe="dynamic-int8", backend="fbgemm")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import zipfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, entry_points, packages_distributions, version
from pathlib import Path
from typing import Any, Iterable

from modelpress.models_db import create_job, make_engine, make_sessionmaker
from modelpress.optimize.errors import ModelLoadError, UnknownModelError, UserInputError
from modelpress.optimize.recipes import Recipe, resolve_recipe
from modelpress.settings import Settings
from modelpress.workers.routing import OPTIMIZE_TASK, route_for


class SubmitError(UserInputError):
    """Refused at submit time; no row was written."""


_FACTORY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def check_model_name(name: str, allowlist: tuple[str, ...]) -> None:
    """Registered entry point, or ``module:attr`` inside the allow-list (module not imported here).

    Example:
        >>> check_model_name("mlp", ())
        >>> check_model_name("pkg.models:../../x", ("pkg",))
        Traceback (most recent call last):
        ...
        modelpress.optimize.errors.UnknownModelError: model factory 'pkg.models:../../x' is not a dotted module path and a function name (package.module:function)
    """
    if not isinstance(name, str) or not name or len(name) > 300:
        raise UnknownModelError(f"model name {str(name)[:80]!r} is not allowed: 1 to 300 characters")
    names = {ep.name for ep in entry_points(group="modelpress.models")}
    if name in names:
        return
    if ":" in name:
        # Only a plain dotted path: no relative imports, no path separators, no attribute chains.
        if not _FACTORY_NAME.match(name):
            raise UnknownModelError(f"model factory {name!r} is not a dotted module path and a function name "
                                    "(package.module:function)")
        module = name.partition(":")[0]
        if any(module == p or module.startswith(p + ".") for p in allowlist):
            return
        raise UnknownModelError(f"model factory {name!r} is not allowed: its module is outside "
                                f"MODELPRESS_FACTORY_ALLOWLIST ({', '.join(allowlist) or 'empty'})")
    raise UnknownModelError(f"unknown model {name!r}; registered models: {', '.join(sorted(names))}")


def builtin_content_id(name: str) -> str | None:
    """The dedupe content id of a model used without a weights file, computed without importing torch.

    ``sha256("builtin:<name>:<distribution>==<version>")`` where the distribution is the installed
    package that registers the entry point (or, for ``module:function``, owns the module). The spec's
    own ``version`` lives behind a torch import, so the package version stands in for it: a release
    that could change a built-in model changes the id (a re-run, never a stale reuse). ``None`` (no
    dedupe) for a module no installed distribution owns.

    Example:
        >>> builtin_content_id("mlp") == hashlib.sha256(b"builtin:mlp:modelpress==0.1.0").hexdigest()
        True
    """
    eps = {ep.name: ep for ep in entry_points(group="modelpress.models")}
    dist_name: str | None = None
    if name in eps and eps[name].dist is not None:
        dist_name = eps[name].dist.name
    elif ":" in name:
        owners = packages_distributions().get(name.partition(":")[0].split(".")[0], [])
        dist_name = owners[0] if len(owners) == 1 else None
    if dist_name is None:
        return None
    try:
        dist_version = version(dist_name)
    except PackageNotFoundError:
        return None
    return hashlib.sha256(f"builtin:{name}:{dist_name}=={dist_version}".encode()).hexdigest()


def check_weights_file(path: Path, *, max_bytes: int) -> None:
    """Refuse, without torch, a weights file whose structure is broken (truncated, corrupt, not weights).

    ``.safetensors``: the header must parse and its tensors must end exactly at the end of the file.
    Otherwise a ``torch.save`` zip: its directory must be readable, every member's CRC must match, it must
    hold a ``data.pkl``, and it must not unpack to more than ``max_bytes``. A legacy (pre-zip) ``torch.save``
    pickle is passed on: the worker reads it with ``weights_only=True``, which refuses code.

    Example:
        >>> import tempfile; p = Path(tempfile.mktemp(suffix=".safetensors")); _ = p.write_bytes(b"\x05")
        >>> check_weights_file(p, max_bytes=1 << 20)
        Traceback (most recent call last):
        ...
        modelpress.optimize.errors.ModelLoadError: weights file ... is not a valid safetensors file: shorter than its 8-byte header length
    """
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"weights file {path.name} is empty")
    with path.open("rb") as f:
        head = f.read(8)
        if path.suffix.lower() == ".safetensors":
            _check_safetensors(path, f, head, size)
            return
    if head[:2] == b"PK":
        _check_torch_zip(path, max_bytes)
    elif head[:1] != b"\x80":  # pickle protocol 2+ opcode: a legacy torch.save file
        raise ModelLoadError(f"weights file {path.name} is neither a safetensors file nor a torch.save file; "
                             "save it with safetensors or torch.save(model.state_dict())")


def _check_safetensors(path: Path, f: Any, head: bytes, size: int) -> None:
    def bad(why: str) -> ModelLoadError:
        return ModelLoadError(f"weights file {path.name} is not a valid safetensors file: {why}")

    if len(head) < 8:
        raise bad("shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", head)
    if n > min(size - 8, 100 * 1024 * 1024):
        raise bad(f"its header claims {n} bytes, but the file has {size - 8} (truncated?)")
    try:
        header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError):
        raise bad("its header is not JSON (corrupt or truncated)") from None
    if not isinstance(header, dict):
        raise bad("its header is not a mapping")
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]
    if len(ends) != len([k for k in header if k != "__metadata__"]):
        raise bad("a tensor entry has no data_offsets")
    if (max(ends) if ends else 0) != size - 8 - n:
        raise bad(f"its tensors need {max(ends) if ends else 0} data bytes, the file has {size - 8 - n} (truncated?)")


def _check_torch_zip(path: Path, max_bytes: int) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if not any(i.filename.endswith("data.pkl") for i in infos):
                raise ModelLoadError(f"weights file {path.name} is a zip without data.pkl, not a torch.save file")
            unpacked = sum(i.file_size for i in infos)
            if unpacked > max_bytes:
                raise ModelLoadError(f"weights file {path.name} unpacks to {unpacked} bytes, over the limit of "
                                     f"{max_bytes} bytes (MODELPRESS_MAX_WEIGHTS_BYTES)")
            broken = zf.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError) as e:
        raise ModelLoadError(f"weights file {path.name} is corrupt or truncated ({type(e).__name__}: {e}); "
                             "save it again with torch.save(model.state_dict()) or safetensors") from None
    if broken is not None:
        raise ModelLoadError(f"weights file {path.name} is corrupt: {broken} fails its checksum")


def installed_torch_version() -> str | None:
    """torch's version as workers record it (``torch.__version__``), read from package metadata only."""
    try:
        return version("torch")
    except PackageNotFoundError:
        return None


@dataclass(frozen=True)
class JobRequest:
    model: str
    recipe: Recipe
    backend: str
    weights: str | None = None


@dataclass(frozen=True)
class Submission:
    """What ``submit_batch`` did: every new row, and which of them were enqueued or reused a result."""

    batch_id: str | None
    job_ids: list[str]
    enqueued: list[str] = field(default_factory=list)
    reused: dict[str, str] = field(default_factory=dict)  # new job id → id of the job whose result it reuses


class Producer:
    """Submits jobs for one ``Settings``; keeps one DB engine and one Celery app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine = make_engine(settings.effective_database_url)
        self.sessions = make_sessionmaker(self._engine)
        self._app: Any = None

    @property
    def app(self) -> Any:
        if self._app is None:
            from modelpress.workers.app import make_app

            self._app = make_app(self.settings)
        return self._app

    def close(self) -> None:
        self._engine.dispose()

    def validate(self, *, model: str, recipe: str | Recipe, backend: str, weights: str | None = None,
                 runtime: str | None = None) -> JobRequest:
        """Check one job request; raises ``UserInputError`` subclasses with the reason.

        ``runtime`` (torch | onnxruntime | openvino | auto) overrides the recipe's own runtime.
        """
        try:
            route_for(backend)
        except ValueError as e:
            raise SubmitError(str(e)) from None
        check_model_name(model, self.settings.factory_allowlist)
        rec = recipe if isinstance(recipe, Recipe) else resolve_recipe(recipe)
        if runtime is not None:
            from modelpress.optimize.recipes import with_runtime

            rec = with_runtime(rec, runtime)
        if rec.time_limit_s is not None and rec.time_limit_s > self.settings.task_soft_time_limit:
            # The Redis visibility timeout is sized for the deployment's limit: a longer job would be
            # delivered again while still running.
            raise SubmitError(f"recipe {rec.name!r}: time_limit_s {rec.time_limit_s} is above this deployment's "
                              f"MODELPRESS_TASK_SOFT_TIME_LIMIT ({self.settings.task_soft_time_limit} s)")
        if weights is not None:
            p = Path(weights)
            if not p.is_file():
                raise ModelLoadError(f"weights file {weights!r} does not exist")
            size = p.stat().st_size
            if size > self.settings.max_weights_bytes:
                raise ModelLoadError(f"weights file {p.name} is {size} bytes, over the limit of "
                                     f"{self.settings.max_weights_bytes} bytes (MODELPRESS_MAX_WEIGHTS_BYTES)")
            check_weights_file(p, max_bytes=self.settings.max_weights_bytes)
        return JobRequest(model=model, recipe=rec, backend=backend, weights=weights)

    def _stage_weights(self, weights: str) -> tuple[str, str]:
        """Copy weights into the artifact store under their sha256, so every worker can read them.

        Returns (URI recorded on the job row, sha256); the task fetches the file back through the store
        and checks that hash before torch sees a byte.
        """
        from modelpress.store import ArtifactStore

        obj = ArtifactStore.from_settings(self.settings).put_file(weights, prefix="inputs")
        return obj.uri, obj.sha256

    def submit_batch(self, requests: Iterable[JobRequest], *, name: str | None = None, kind: str = "manual",
                     source: str | None = None, reuse: bool = True) -> Submission:
        """Write a batch and all its rows in one transaction, then publish one message per job to run.

        With ``reuse`` (the default; ``--force`` turns it off) a request whose (model content hash,
        recipe hash, backend, torch version) already has a result gets a finished row with
        ``reused=True`` that copies that result, and no message.

        Example:
            >>> sub = producer.submit_batch([producer.validate(model="mlp", recipe="dynamic-int8",
            ...                              backend="fbgemm")], name="try", kind="manifest")  # doctest: +SKIP
            >>> len(sub.enqueued) + len(sub.reused) == len(sub.job_ids)  # doctest: +SKIP
            True
        """
        from modelpress.models_db.jobs import create_reused_job, find_reusable_job, stage_batch
        from modelpress.workers.app import job_message_options

        reqs = list(requests)
        torch_version = installed_torch_version() if reuse else None
        content_ids: dict[str, str | None] = {}
        reused: dict[str, str] = {}
        with self.sessions() as s:
            batch_id = stage_batch(session=s, name=name, kind=kind, source=source).id if name else None
            jobs = []
            for r in reqs:
                if r.weights:
                    uri, digest = self._stage_weights(r.weights)
                else:
                    if r.model not in content_ids:
                        content_ids[r.model] = builtin_content_id(r.model)
                    uri, digest = None, content_ids[r.model]
                common = dict(model_name=r.model, model_weights_uri=uri, recipe_name=r.recipe.name,
                              recipe_json=r.recipe.to_json(), recipe_sha256=r.recipe.sha256, backend=r.backend,
                              batch_id=batch_id)
                found = None
                if torch_version and digest:
                    found = find_reusable_job(session=s, model_sha256=digest, recipe_sha256=r.recipe.sha256,
                                              backend=r.backend, torch_version=torch_version)
                if found is not None:
                    job = create_reused_job(session=s, source=found, model_sha256=digest, commit=False, **common)
                else:
                    job = create_job(session=s, model_sha256=digest, commit=False, **common)
                job.time_limit_s = r.recipe.time_limit_s  # the job's own limit: on its row and on each message
                jobs.append(job)
            s.commit()
            ids = [(j.id, j.backend, j.reused_from_job_id if j.reused else None) for j in jobs]
            limits = {j.id: j.time_limit_s for j in jobs}
        # Rows first, messages second: a message lost here leaves a queued row that the reconciler
        # re-publishes, never a message without a row.
        enqueued = []
        for job_id, backend, reused_from in ids:
            if reused_from:
                reused[job_id] = reused_from
                continue
            self.app.send_task(OPTIMIZE_TASK, args=[job_id],
                               **job_message_options(self.settings, backend=backend, time_limit_s=limits[job_id]))
            enqueued.append(job_id)
        return Submission(batch_id=batch_id, job_ids=[i for i, _, _ in ids], enqueued=enqueued, reused=reused)

    def submit_many(self, requests: Iterable[JobRequest], *, batch_name: str | None = None,
                    reuse: bool = False) -> list[str]:
        """Write all rows in one transaction, then publish one message per job; returns the job ids.

        ``reuse`` is off here by default: callers such as the nightly run want a fresh measurement.
        """
        return self.submit_batch(requests, name=batch_name, reuse=reuse).job_ids

    def submit(self, *, model: str, recipe: str | Recipe, backend: str, weights: str | None = None,
               reuse: bool = False, runtime: str | None = None) -> str:
        """Validate and enqueue one job (or, with ``reuse``, reuse an identical finished one); returns its id."""
        req = self.validate(model=model, recipe=recipe, backend=backend, weights=weights, runtime=runtime)
        return self.submit_batch([req], reuse=reuse).job_ids[0]

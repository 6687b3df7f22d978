"""The producer API: validate, stage the files, write the job row, then publish a message carrying only the job id.

Everything that can be known at submit time is checked before any row exists: here, that the model is
registered (or allow-listed), the recipe parses, the backend has a queue and a registered model's weights
file is sound (``optimize.sources.weights_file``); a model given by its files is checked by its own
source (``optimize.sources.submit``) and staged into the store by ``intake``. No torch import:
submitting is cheap.

Example:
    >>> from modelpress.settings import Settings
    >>> from modelpress.api import Producer
    >>> p = Producer(Settings(home="/tmp/mp-doc"))  # doctest: +SKIP
    >>> job_id = p.submit(model="mlp", recipe="dynamic-int8", backend="fbgemm")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from modelpress.errors import ModelLoadError, UnknownModelError, UserInputError
from modelpress.models_db import create_job, make_engine, make_sessionmaker
from modelpress.optimize.recipes import Recipe, resolve_recipe
from modelpress.optimize.sources.weights_file import weights_file_problems
from modelpress.settings import Settings
from modelpress.workers.routing import OPTIMIZE_TASK, route_for
from modelpress.zoo.builtin_weights import builtin_content_id

if TYPE_CHECKING:
    from modelpress.optimize.sources import ModelRef


class SubmitError(UserInputError):
    """Refused at submit time; no row was written."""


_FACTORY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def registered_model_names() -> frozenset[str]:
    """Names in the ``modelpress.models`` entry-point group (one registry read: call once per submit).

    Example:
        >>> "mlp" in registered_model_names()
        True
    """
    return frozenset(ep.name for ep in entry_points(group="modelpress.models"))


def check_model_name(name: str, allowlist: tuple[str, ...], *, registered: frozenset[str] | None = None) -> None:
    """Registered entry point, or ``module:attr`` inside the allow-list (module not imported here).

    Example:
        >>> check_model_name("mlp", ())
        >>> check_model_name("pkg.models:../../x", ("pkg",))
        Traceback (most recent call last):
        ...
        modelpress.errors.UnknownModelError: model factory 'pkg.models:../../x' is not a dotted module path and a function name (package.module:function)
    """
    if not isinstance(name, str) or not name or len(name) > 300:
        raise UnknownModelError(f"model name {str(name)[:80]!r} is not allowed: 1 to 300 characters")
    names = registered_model_names() if registered is None else registered
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


def weights_content_id(name: str, weights_sha256: str) -> str:
    """The dedupe content id of a registered model loaded with a weights file.

    The weights alone are not enough: two factories loading the same file build different models, and a
    changed factory builds another one (issue 10 item 6). So the id covers the factory too
    (``builtin_content_id``, or the bare name when no distribution owns it).

    Example:
        >>> weights_content_id("mlp", "0" * 64) != weights_content_id("digits_cnn", "0" * 64)
        True
    """
    factory = builtin_content_id(name) or f"unowned:{name}"
    return hashlib.sha256(f"weights:{weights_sha256}:factory:{factory}".encode()).hexdigest()


#: Packages a job's result can depend on (the runtimes' own ``versions()`` name these distributions).
RUNTIME_PACKAGES = ("torch", "onnxruntime", "onnx", "openvino", "nncf")


def installed_package_versions(names: Sequence[str] = RUNTIME_PACKAGES) -> dict[str, str]:
    """``{distribution: version}`` of those installed here, from package metadata (no imports).

    Example:
        >>> "torch" in installed_package_versions()  # doctest: +SKIP
        True
    """
    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            pass
    return out


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
    # A model given by its files (hf:/torchvision:/timm:/export:, or a registered one with data), with
    # absolute local paths (for reading at submit only: the row gets store keys and a relative name,
    # ``intake.resolve_paths``); staged into the store by ``submit_batch`` (issue 9). None: ``model`` names
    # a registered factory and ``weights`` is all it needs.
    ref: "ModelRef | None" = None


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
                 data: "str | dict[str, Any] | None" = None, preprocess: dict[str, Any] | None = None,
                 metric: str | None = None, max_length: int | None = None,
                 latency_batches: "Iterable[int] | None" = None, base_dir: str | Path = ".",
                 primary_output: str | None = None, ref: "ModelRef | None" = None, registered: frozenset[str] | None = None,
                 runtime: str | None = None) -> JobRequest:
        """Check one job request; raises ``UserInputError`` subclasses with the reason.

        ``model`` is a registered name (or allow-listed ``module:function``) or a source reference
        ``hf:PATH``, ``torchvision:NAME``, ``timm:NAME``, ``export:PATH.pt2`` (issue 9); those need
        ``data`` (``{"eval": ..., "calibration": ...}``, or just the eval path), and torchvision/timm a
        ``weights`` file. Relative paths are taken from ``base_dir``. Every file is checked cheaply by its
        source (``optimize.sources.submit.check_ref``); ``ref`` passes a reference already resolved and
        checked (the manifest does that once per model), leaving only the recipe and backend to check.
        ``registered`` is the entry-point names, read once by a caller validating many requests.
        ``runtime`` (torch | onnxruntime | openvino | auto) overrides the recipe's own runtime.

        Example:
            >>> producer.validate(model="hf:models/intent", data={"eval": "intent-eval.jsonl"},
            ...                   recipe="dynamic-int8", backend="fbgemm").model  # doctest: +SKIP
            'hf:intent'
        """
        try:
            route_for(backend)
        except ValueError as e:
            raise SubmitError(str(e)) from None
        rec = recipe if isinstance(recipe, Recipe) else resolve_recipe(recipe)
        if runtime is not None:
            from modelpress.optimize.recipes import with_runtime

            rec = with_runtime(rec, runtime)
        extras = (data, preprocess, metric, max_length, latency_batches, primary_output)
        if ref is None and (any(x is not None for x in extras) or model_has_source_prefix(model)):
            ref = self.model_ref(model=model, weights=weights, data=data, preprocess=preprocess, metric=metric,
                                 max_length=max_length, latency_batches=latency_batches, base_dir=base_dir,
                                 primary_output=primary_output)
        if ref is not None:
            from modelpress.intake import IntakeError
            from modelpress.optimize.sources.submit import step_problems

            if ref.kind == "registered":
                check_model_name(ref.name, self.settings.factory_allowlist, registered=registered)
            self._check_time_limit(rec)
            problems = step_problems(ref, rec)
            if problems:
                raise IntakeError(problems)
            return JobRequest(model=ref.display_name, recipe=rec, backend=backend, ref=ref)
        check_model_name(model, self.settings.factory_allowlist, registered=registered)
        self._check_time_limit(rec)
        if weights is not None:
            # The same checks as a source's weights at submit (missing, over the limit, broken structure).
            problems = weights_file_problems(Path(weights), max_bytes=self.settings.max_weights_bytes)
            if problems:
                raise ModelLoadError(problems[0])
        return JobRequest(model=model, recipe=rec, backend=backend, weights=weights)

    def _check_time_limit(self, rec: Recipe) -> None:
        if rec.time_limit_s is not None and rec.time_limit_s > self.settings.task_soft_time_limit:
            # The Redis visibility timeout is sized for the deployment's limit: a longer job would be
            # delivered again while still running.
            raise SubmitError(f"recipe {rec.name!r}: time_limit_s {rec.time_limit_s} is above this deployment's "
                              f"MODELPRESS_TASK_SOFT_TIME_LIMIT ({self.settings.task_soft_time_limit} s)")

    def model_ref(self, *, model: str, weights: str | None = None, data: "str | dict[str, Any] | None" = None,
                  preprocess: dict[str, Any] | None = None, metric: str | None = None, max_length: int | None = None,
                  latency_batches: "Iterable[int] | None" = None, base_dir: str | Path = ".",
                  primary_output: str | None = None) -> "ModelRef":
        """Parse, resolve (paths absolute under ``base_dir``) and check a model given by its files.

        ``primary_output`` names the output of an ``export:`` program with several that carries the budget.

        Raises ``IntakeError`` listing every problem (field, message) found without torch.

        Example:
            >>> producer.model_ref(model="export:ranker.pt2", data="ranker-eval.safetensors").kind  # doctest: +SKIP
            'export'
        """
        from modelpress.intake import IntakeError, resolve_paths
        from modelpress.optimize.sources import parse_model_ref
        from modelpress.optimize.sources.submit import check_ref

        if isinstance(data, str):
            data = {"eval": data}
        ref = parse_model_ref(model, weights=weights, data=data, preprocess=preprocess, metric=metric,
                              max_length=max_length, primary_output=primary_output,
                              latency_batches=tuple(latency_batches) if latency_batches is not None else None)
        ref = resolve_paths(ref, base_dir)
        if ref.kind == "registered":
            check_model_name(ref.name, self.settings.factory_allowlist)
        problems = check_ref(ref, max_bytes=self.settings.max_weights_bytes)
        if problems:
            raise IntakeError(problems)
        return ref

    def _stage_ref(self, ref: "ModelRef") -> "ModelRef":
        """Every file of ``ref`` into the artifact store; the ref a job row keeps (``intake.stage_ref``)."""
        from modelpress.intake import stage_ref
        from modelpress.store import ArtifactStore

        return stage_ref(ref, store=ArtifactStore.from_settings(self.settings), max_bytes=self.settings.max_weights_bytes)

    def _stage_weights(self, weights: str) -> tuple[str, str]:
        """Copy weights into the artifact store under their sha256, so every worker can read them.

        Returns (URI recorded on the job row, sha256); the task fetches the file back through the store
        and checks that hash before torch sees a byte.
        """
        from modelpress.store import ArtifactStore

        obj = ArtifactStore.from_settings(self.settings).put_file(weights, prefix="inputs")
        return obj.uri, obj.sha256

    def submit_batch(self, requests: Iterable[JobRequest], *, name: str | None = None, kind: str = "manual",
                     source: str | None = None, reuse: bool = True, force: bool = False) -> Submission:
        """Write a batch and all its rows in one transaction, then publish one message per job to run.

        With ``reuse`` (the default; ``--force`` turns it off) a request whose (model content hash,
        recipe hash, backend, torch version) already has a result gets a finished row with
        ``reused=True`` that copies that result, and no message.

        ``force`` (``--force``) means measured anew: no reuse here, and each row carries ``force=True`` so
        the worker does not answer from its own result cache either (the row then says ``reused=False``).

        Example:
            >>> sub = producer.submit_batch([producer.validate(model="mlp", recipe="dynamic-int8",
            ...                              backend="fbgemm")], name="try", kind="manifest")  # doctest: +SKIP
            >>> len(sub.enqueued) + len(sub.reused) == len(sub.job_ids)  # doctest: +SKIP
            True
        """
        from modelpress.models_db.jobs import create_reused_job, find_reusable_job, stage_batch
        from modelpress.workers.routing import job_message_options

        reqs = list(requests)
        reuse = reuse and not force
        torch_version = installed_torch_version() if reuse else None
        if reuse:
            from modelpress.optimize.buildinfo import build_fingerprint

            builder, installed = build_fingerprint(), installed_package_versions()
        # Own models' files go into the store before the transaction (a slow copy holds no rows open),
        # once per distinct model however many recipes and backends it runs with.
        staged: dict[str, "ModelRef"] = {}
        for r in reqs:
            if r.ref is not None and r.ref.to_json() not in staged:
                staged[r.ref.to_json()] = self._stage_ref(r.ref)
        content_ids: dict[str, str | None] = {}
        reused: dict[str, str] = {}
        # Hash and copy each distinct weights file once, *before* the transaction: on SQLite the first
        # INSERT takes the database's write lock, and holding it while big files are copied starves
        # the workers' heartbeats (the reconciler then takes live jobs over).
        staged_weights: dict[str, tuple[str, str]] = {}
        for r in reqs:
            if r.ref is None and r.weights and r.weights not in staged_weights:  # keyed by the path given
                staged_weights[r.weights] = self._stage_weights(r.weights)
        with self.sessions() as s:
            batch_id = stage_batch(session=s, name=name, kind=kind, source=source).id if name else None
            jobs = []
            for r in reqs:
                ref = staged[r.ref.to_json()] if r.ref is not None else None
                if ref is not None:
                    uri, digest = None, ref.content_sha256
                elif r.weights:
                    uri, digest = staged_weights[r.weights]
                    digest = weights_content_id(r.model, digest)
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
                                              backend=r.backend, torch_version=torch_version,
                                              builder_sha256=builder, installed=installed)
                if found is not None:
                    job = create_reused_job(session=s, source=found, model_sha256=digest, commit=False, **common)
                else:
                    job = create_job(session=s, model_sha256=digest, commit=False, **common)
                job.time_limit_s = r.recipe.time_limit_s  # the job's own limit: on its row and on each message
                if ref is not None:
                    job.model_ref = ref.to_dict()  # store refs only: a worker needs nothing but the store
                job.force = force
                jobs.append(job)
            s.commit()
            ids = [(j.id, j.backend, j.reused_from_job_id if j.reused else None) for j in jobs]
            names = {j.id: (j.model_name, j.recipe_name) for j in jobs}
            limits = {j.id: j.time_limit_s for j in jobs}
        # Rows first, messages second: a message lost here leaves a queued row that the reconciler
        # re-publishes, never a message without a row.
        enqueued = []
        for job_id, backend, reused_from in ids:
            if reused_from:
                reused[job_id] = reused_from
                continue
            self.app.send_task(OPTIMIZE_TASK, args=[job_id],
                               **job_message_options(self.settings, backend=backend, time_limit_s=limits[job_id],
                                                     model=names[job_id][0], recipe=names[job_id][1]))
            enqueued.append(job_id)
        return Submission(batch_id=batch_id, job_ids=[i for i, _, _ in ids], enqueued=enqueued, reused=reused)

    def submit_many(self, requests: Iterable[JobRequest], *, batch_name: str | None = None,
                    reuse: bool = False) -> list[str]:
        """Write all rows in one transaction, then publish one message per job; returns the job ids.

        ``reuse`` is off here by default: callers such as the nightly run want a fresh measurement.
        """
        return self.submit_batch(requests, name=batch_name, reuse=reuse).job_ids

    def submit(self, *, model: str, recipe: str | Recipe, backend: str, weights: str | None = None,
               reuse: bool = False, force: bool = False, runtime: str | None = None,
               **source: Any) -> str:
        """Validate and enqueue one job (or, with ``reuse``, reuse an identical finished one); returns its id.

        ``source`` takes ``validate``'s own-model fields: ``data``, ``preprocess``, ``metric``,
        ``max_length``, ``latency_batches``, ``primary_output``, ``base_dir``. ``force`` measures anew, bypassing the
        worker's result cache too (see ``submit_batch``).

        Example:
            >>> producer.submit(model="torchvision:resnet18", weights="r18.safetensors",
            ...                 data={"eval": "val-images/", "calibration": "calib-images/"},
            ...                 recipe="static-int8", backend="fbgemm")  # doctest: +SKIP
            '6b6984c1…'
        """
        req = self.validate(model=model, recipe=recipe, backend=backend, weights=weights, runtime=runtime, **source)
        return self.submit_batch([req], reuse=reuse, force=force).job_ids[0]


_SOURCE_PREFIXES = ("hf:", "torchvision:", "timm:", "export:")


def model_has_source_prefix(model: str) -> bool:
    """Whether ``model`` names a model by its files (``hf:``, ``torchvision:``, ``timm:``, ``export:``).

    Example:
        >>> model_has_source_prefix("hf:models/bert"), model_has_source_prefix("pkg.mod:factory")
        (True, False)
    """
    return isinstance(model, str) and model.strip().startswith(_SOURCE_PREFIXES)

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
import os
import shutil
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Iterable

from modelpress.models_db import create_batch, create_job, make_engine, make_sessionmaker
from modelpress.optimize.errors import ModelLoadError, UnknownModelError, UserInputError
from modelpress.optimize.recipes import Recipe, resolve_recipe
from modelpress.settings import Settings
from modelpress.workers.routing import OPTIMIZE_TASK, route_for


class SubmitError(UserInputError):
    """Refused at submit time; no row was written."""


def check_model_name(name: str, allowlist: tuple[str, ...]) -> None:
    """Registered entry point, or ``module:attr`` inside the allow-list (module not imported here)."""
    names = {ep.name for ep in entry_points(group="modelpress.models")}
    if name in names:
        return
    if ":" in name:
        module = name.partition(":")[0]
        if any(module == p or module.startswith(p + ".") for p in allowlist):
            return
        raise UnknownModelError(f"model factory {name!r} is not allowed: its module is outside "
                                f"MODELPRESS_FACTORY_ALLOWLIST ({', '.join(allowlist) or 'empty'})")
    raise UnknownModelError(f"unknown model {name!r}; registered models: {', '.join(sorted(names))}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class JobRequest:
    model: str
    recipe: Recipe
    backend: str
    weights: str | None = None


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

    def validate(self, *, model: str, recipe: str | Recipe, backend: str, weights: str | None = None) -> JobRequest:
        """Check one job request; raises ``UserInputError`` subclasses with the reason."""
        try:
            route_for(backend)
        except ValueError as e:
            raise SubmitError(str(e)) from None
        check_model_name(model, self.settings.factory_allowlist)
        rec = recipe if isinstance(recipe, Recipe) else resolve_recipe(recipe)
        if weights is not None:
            p = Path(weights)
            if not p.is_file():
                raise ModelLoadError(f"weights file {weights!r} does not exist")
            size = p.stat().st_size
            if size > self.settings.max_weights_bytes:
                raise ModelLoadError(f"weights file {p.name} is {size} bytes, over the limit of "
                                     f"{self.settings.max_weights_bytes} bytes (MODELPRESS_MAX_WEIGHTS_BYTES)")
        return JobRequest(model=model, recipe=rec, backend=backend, weights=weights)

    def _stage_weights(self, weights: str) -> tuple[str, str]:
        """Copy weights into the store under their sha256, so every worker can read them."""
        src = Path(weights)
        digest = _sha256(src)
        dest = Path(self.settings.effective_artifact_store) / "inputs" / f"{digest}{src.suffix}"
        if not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        return str(dest), digest

    def submit_many(self, requests: Iterable[JobRequest], *, batch_name: str | None = None) -> list[str]:
        """Write all rows in one transaction, then publish one message per job."""
        reqs = list(requests)
        with self.sessions() as s:
            batch_id = create_batch(session=s, name=batch_name).id if batch_name else None
            jobs = []
            for r in reqs:
                uri, digest = self._stage_weights(r.weights) if r.weights else (None, None)
                jobs.append(create_job(session=s, model_name=r.model, model_weights_uri=uri, model_sha256=digest,
                                       recipe_name=r.recipe.name, recipe_json=r.recipe.to_json(),
                                       recipe_sha256=r.recipe.sha256, backend=r.backend, batch_id=batch_id,
                                       commit=False))
            s.commit()
            ids = [(j.id, j.backend) for j in jobs]
        # Rows first, messages second: a message lost here leaves a queued row that the reconciler
        # re-publishes, never a message without a row.
        for job_id, backend in ids:
            self.app.send_task(OPTIMIZE_TASK, args=[job_id], **route_for(backend))
        return [i for i, _ in ids]

    def submit(self, *, model: str, recipe: str | Recipe, backend: str, weights: str | None = None) -> str:
        """Validate and enqueue one job; returns its id."""
        return self.submit_many([self.validate(model=model, recipe=recipe, backend=backend, weights=weights)])[0]

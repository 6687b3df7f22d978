"""Nightly recompression: every model × recipe × backend once per night, compared with the last good night.

Beat sends ``modelpress.nightly`` on ``MODELPRESS_NIGHTLY_SCHEDULE`` (crontab, UTC) to the ``ops``
queue; the task calls ``submit_night``, which writes one job row per (model, recipe, backend) with
``night`` set, in the night's batch (``nightly-YYYY-MM-DD``, kind ``nightly``), then publishes each
new row's id. The unique constraint ``uq_jobs_nightly`` makes a re-triggered night (a second beat, a
retry, ``modelpress nightly run-now``) a no-op row by row: nothing is published twice.

When an optimize task finishes, a ``task_postrun`` hook in the worker child compares the job with the
latest *succeeded* job of an earlier night (same model, recipe, backend) and writes what got worse
beyond ``MODELPRESS_REGRESSION_*`` into the job's ``regression`` column (``NULL``: nothing did). The
optimize task itself stays unaware of nights.

Example:
    >>> prev = {"metric_name": "acc", "metric_after": 0.99, "latency_after_median_ms": 1.0,
    ...         "size_after_bytes": 1000, "status": "succeeded"}
    >>> cur = {**prev, "metric_after": 0.95}
    >>> sorted(find_regressions(prev, cur, Tolerances(metric_drop=0.005, latency_increase=0.2,
    ...                                                size_increase=0.01))["worse"])
    ['metric_after']
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import entry_points
from typing import Any, Protocol

from modelpress.settings import Settings

log = logging.getLogger(__name__)

from modelpress.workers.routing import NIGHTLY_TASK  # noqa: F401 - re-exported: older import path


class _Publisher(Protocol):
    def send_task(self, name: str, args: Any = None, **options: Any) -> Any: ...


@dataclass(frozen=True)
class Tolerances:
    """How much worse than the last good night a result may be before it is flagged.

    ``metric_drop`` is absolute (0.005 = half a point of accuracy), except for a metric that is better lower
    (perplexity), where it is a fraction of the last good night's (0.005 = 0.5 % higher); the others are fractions
    (0.2 = 20 % slower, 0.01 = 1 % larger).

    Example:
        >>> Tolerances.from_settings(Settings(home="/tmp/mp-doc")).size_increase
        0.01
    """

    metric_drop: float
    latency_increase: float
    size_increase: float

    @classmethod
    def from_settings(cls, settings: Settings) -> "Tolerances":
        return cls(metric_drop=settings.regression_metric_drop, latency_increase=settings.regression_latency_increase,
                   size_increase=settings.regression_size_increase)


def utc_night(now: datetime | None = None) -> str:
    """The night a run belongs to: the UTC date (YYYY-MM-DD) when it was triggered.

    Example:
        >>> utc_night(datetime(2025, 1, 31, 2, 0, tzinfo=timezone.utc))
        '2025-01-31'
    """
    return (now or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%d")


def registered_models() -> list[str]:
    """Names of the models registered through the ``modelpress.models`` entry point group.

    Example:
        >>> "mlp" in registered_models()
        True
    """
    return sorted({ep.name for ep in entry_points(group="modelpress.models")})


@dataclass(frozen=True)
class PlannedJob:
    model: str
    recipe: Any  # optimize.recipes.Recipe (imported lazily: it is light, but keeps this module's import tiny)
    backend: str


def night_plan(settings: Settings) -> list[PlannedJob]:
    """What one night submits: every configured model × recipe × backend, validated like ``submit``.

    Raises ``UserInputError`` naming the bad model or recipe: a typo in the settings fails at beat start
    (``modelpress beat`` checks the plan) rather than silently at 2 a.m.

    Example:
        >>> plan = night_plan(Settings(home="/tmp/mp-doc", nightly_models=("mlp",), nightly_backends=("fbgemm",)))
        >>> [(p.model, p.recipe.name, p.backend) for p in plan]
        [('mlp', 'dynamic-int8', 'fbgemm')]
    """
    from modelpress.api import check_model_name
    from modelpress.optimize.recipes import resolve_recipe

    models = list(settings.nightly_models) or registered_models()
    for m in models:
        check_model_name(m, settings.factory_allowlist)
    recipes = [resolve_recipe(r) for r in settings.nightly_recipes]
    return [PlannedJob(m, r, b) for m in models for r in recipes for b in settings.nightly_backends]


@dataclass
class NightResult:
    """What ``submit_night`` did: ids it queued (and published), and how many the night already had."""

    night: str
    batch_id: str
    queued: list[str] = field(default_factory=list)
    already_queued: int = 0

    def __str__(self) -> str:
        return (f"night {self.night}: {len(self.queued)} job(s) queued, {self.already_queued} already there "
                f"(batch {self.batch_id})")


def _sessions(settings: Settings) -> Any:
    from modelpress.models_db.engine import process_sessionmaker

    return process_sessionmaker(settings.effective_database_url, **settings.db_engine_options())


def submit_night(settings: Settings, *, app: _Publisher, night: str | None = None) -> NightResult:
    """Queue tonight's jobs once: rows first (one transaction each), then one message per new row.

    Example:
        >>> from modelpress.workers.app import make_app
        >>> s = Settings(home="/tmp/mp-doc")
        >>> print(submit_night(s, app=make_app(s), night="2025-01-31"))  # doctest: +SKIP
        night 2025-01-31: 4 job(s) queued, 0 already there (batch nightly-2025-01-31)
    """
    from modelpress.models_db.jobs import create_nightly_job, get_or_create_nightly_batch
    from modelpress.workers.routing import OPTIMIZE_TASK, job_message_options

    night = night or utc_night()
    datetime.strptime(night, "%Y-%m-%d")  # refuse anything but a date: it is part of a unique key
    plan = night_plan(settings)
    with _sessions(settings)() as s:
        batch_id = get_or_create_nightly_batch(session=s, night=night).id
        result = NightResult(night=night, batch_id=batch_id)
        for p in plan:
            job = create_nightly_job(session=s, night=night, batch_id=batch_id, model_name=p.model,
                                     recipe_name=p.recipe.name, recipe_json=p.recipe.to_json(),
                                     recipe_sha256=p.recipe.sha256, backend=p.backend,
                                     time_limit_s=p.recipe.time_limit_s)
            if job is None:
                result.already_queued += 1
                continue
            # Row committed before the message: a publish lost here leaves a queued row that the
            # reconciler re-publishes, never a message without a row (same order as Producer).
            # The recipe's own time limit, on the row and on the message, as for a submitted job.
            app.send_task(OPTIMIZE_TASK, args=[job.id],
                          **job_message_options(settings, backend=p.backend, time_limit_s=p.recipe.time_limit_s,
                                                model=p.model, recipe=p.recipe.name))
            result.queued.append(job.id)
    log.info("%s", result)
    return result


# ----------------------------------------------------------------------------- regressions
#: Metrics where lower is better; their regressions are compared as a relative rise.
LOWER_IS_BETTER = ("perplexity",)
_FIELDS = (
    # column, label, direction: +1 = higher is worse
    ("metric_after", "metric", -1),
    ("latency_after_median_ms", "median latency", +1),
    ("size_after_bytes", "size", +1),
)


def find_regressions(previous: dict[str, Any], current: dict[str, Any], tol: Tolerances) -> dict[str, Any] | None:
    """What got worse from ``previous`` to ``current`` (job rows as dicts) beyond ``tol``; None if nothing.

    The metric is compared only when both rows measured the same metric. A night that failed or was
    rejected after a succeeded one is a regression of its own (``worse["status"]``).

    Example:
        >>> find_regressions({"size_after_bytes": 100, "status": "succeeded"},
        ...                  {"size_after_bytes": 100, "status": "succeeded"},
        ...                  Tolerances(metric_drop=0, latency_increase=0, size_increase=0)) is None
        True
    """
    worse: dict[str, Any] = {}
    notes: list[str] = []
    if current.get("status") != previous.get("status"):
        worse["status"] = {"previous": previous.get("status"), "current": current.get("status")}
        notes.append(f"{current.get('status')} (was {previous.get('status')})")
    for col, label, direction in _FIELDS:
        a, b = previous.get(col), current.get(col)
        if a is None or b is None:
            continue
        if col == "metric_after":
            if previous.get("metric_name") != current.get("metric_name"):
                continue
            # Perplexity (a causal LM's metric) is better lower: a rise is its drop, relative to the float-like scale.
            drop = (b - a) / a if current.get("metric_name") in LOWER_IS_BETTER and a > 0 else a - b
            if drop > tol.metric_drop:
                worse[col] = {"previous": a, "current": b, "change": -drop, "limit": -tol.metric_drop}
                notes.append(f"{current.get('metric_name') or label} {a:.4f} → {b:.4f} "
                             f"(-{drop:.4f}, allowed -{tol.metric_drop:g})")
            continue
        limit = tol.latency_increase if col.startswith("latency") else tol.size_increase
        if a > 0 and direction * (b - a) / a > limit:
            change = (b - a) / a
            worse[col] = {"previous": a, "current": b, "change": change, "limit": limit}
            unit = " ms" if col.startswith("latency") else " B"
            fmt = ".3f" if col.startswith("latency") else ",d"
            notes.append(f"{label} {format(a, fmt)} → {format(b, fmt)}{unit} (+{change:.0%}, allowed +{limit:.0%})")
    if not worse:
        return None
    return {"worse": worse, "summary": "; ".join(notes)}


def compare_job(settings: Settings, job_id: str) -> dict[str, Any] | None:
    """Compare a finished nightly job with the last good night and store the result in ``regression``.

    Returns what was stored (None: nothing got worse, or nothing to compare with). Non-nightly and
    unfinished jobs are left alone. Idempotent: run it again and the same value is written.

    Example:
        >>> compare_job(settings, "6b6984c1...")  # doctest: +SKIP
        {'worse': {'size_after_bytes': {...}}, 'summary': 'size 654,143 → 700,000 B (+7%, allowed +1%)', ...}
    """
    from modelpress.models_db.jobs import get_job, is_finished, previous_good_nightly_job, set_regression

    with _sessions(settings)() as s:
        job = get_job(session=s, job_id=job_id)
        if job is None or job.night is None or not is_finished(job.status):
            return None
        prev = previous_good_nightly_job(session=s, job=job)
        if prev is None:
            return None  # the first night of this model/recipe/backend: nothing to be worse than
        found = find_regressions(prev.to_dict(), job.to_dict(), Tolerances.from_settings(settings))
        if found is not None:
            found = {"previous_job_id": prev.id, "previous_night": prev.night,
                     # Different weights explain a change without it being our regression; say so.
                     "model_changed": bool(prev.model_sha256 and job.model_sha256
                                           and prev.model_sha256 != job.model_sha256),
                     **found}
            found["summary"] = f"{found['summary']} vs night {prev.night} (job {prev.id[:8]})"
        set_regression(session=s, job_id=job.id, regression=found)
        if found:
            log.warning("nightly regression in job %s (%s %s %s): %s", job.id[:8], job.model_name,
                        job.recipe_name, job.backend, found["summary"])
        return found


def _after_optimize(sender: Any = None, args: Any = None, **_: Any) -> None:
    """``task_postrun`` hook: compare a finished nightly optimize job, in the worker child that ran it."""
    from modelpress.workers.routing import OPTIMIZE_TASK

    if getattr(sender, "name", None) != OPTIMIZE_TASK or not args:
        return
    try:
        compare_job(sender.app.modelpress_settings, str(args[0]))
    except Exception:  # noqa: BLE001 - a failed comparison must never fail (or retry) the job itself
        log.warning("could not compare job %s with the previous night", args[0], exc_info=True)


def register(app: Any) -> None:
    """Register ``modelpress.nightly`` on ``app`` and the comparison hook on its workers.

    Example:
        >>> from modelpress.tasks.registry import make_worker_app
        >>> NIGHTLY_TASK in make_worker_app(Settings(home="/tmp/mp-doc")).tasks
        True
    """
    from celery.signals import task_postrun

    # dispatch_uid: make_app may run several times in one process; the hook must run once per task.
    task_postrun.connect(_after_optimize, weak=False, dispatch_uid="modelpress.nightly.compare")

    @app.task(name=NIGHTLY_TASK, bind=True, acks_late=True)
    def nightly(self: Any, night: str | None = None) -> str:
        # Thin: the night's logic lives in submit_night (also behind `modelpress nightly run-now`).
        return str(submit_night(self.app.modelpress_settings, app=self.app, night=night))

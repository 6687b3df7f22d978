"""One typed settings object, read from the environment (``MODELPRESS_*``).

The defaults are the *embedded* setup: a SQLite file and kombu's ``filesystem://`` broker under
``MODELPRESS_HOME``, so the demo needs no server. Production sets ``MODELPRESS_BROKER_URL=redis://...``
and ``MODELPRESS_DATABASE_URL=postgresql+psycopg://...``.

Example:
    >>> from modelpress.settings import Settings
    >>> s = Settings(home="/tmp/mp-doc")
    >>> s.effective_database_url.startswith("sqlite:///")
    True
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ByteSize, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from modelpress.optimize.limits import DecodedLimits

BACKENDS: tuple[str, ...] = ("fbgemm", "qnnpack")
Backend = Literal["fbgemm", "qnnpack"]


def default_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "modelpress"


def native_backend() -> Backend:
    """The backend whose int8 kernels are fast on this host: qnnpack on ARM, fbgemm on x86."""
    machine = platform.machine().lower()
    return "qnnpack" if machine in {"aarch64", "arm64", "armv7l", "armv8l"} else "fbgemm"


class Settings(BaseSettings):
    """Everything a producer, worker or CLI needs, passed explicitly (never a global)."""

    model_config = SettingsConfigDict(env_prefix="MODELPRESS_", extra="ignore", frozen=True)

    home: Path = Field(default_factory=default_home, description="Root of embedded state.")
    broker_url: str | None = Field(default=None, description="Celery broker; default filesystem:// under home.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite under home.")
    artifact_store: str | None = Field(default=None, description="Directory (or fsspec URL) for artifacts.")
    factory_allowlist: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="Module prefixes whose `module:function` model factories may be loaded."
    )
    max_weights_bytes: int = Field(default=2 * 1024**3, gt=0, description="Refuse larger weight files.")
    max_manifest_bytes: int = Field(default=16 * 1024**2, gt=0, description="Refuse larger manifest files.")
    max_manifest_nodes: int = Field(
        default=1_000_000, gt=0, description="Refuse a manifest whose YAML (aliases expanded) has more nodes.")
    worker_threads: int = Field(default=1, ge=1, description="torch threads per worker child.")
    worker_concurrency: int = Field(default=1, ge=1)
    task_soft_time_limit: int = Field(default=1800, gt=0, description="Seconds; SoftTimeLimitExceeded.")
    task_time_limit: int = Field(default=2100, gt=0, description="Seconds; the child is killed.")
    max_attempts: int = Field(default=3, ge=1, description="Deliveries before a job is failed for good.")
    heartbeat_interval: float = Field(default=5.0, gt=0, description="Seconds between heartbeats of a running job.")
    heartbeat_stale_after: float = Field(default=60.0, gt=0, description="A running job silent this long is lost.")
    # Issue 20 item 7: a folder this service owns (never /tmp: any user could hold the lock there forever).
    timing_lock_dir: Path | None = Field(
        default=None, description="Folder of the lock that serializes latency timing across the workers sharing it "
                                  "(default $MODELPRESS_HOME/timing-lock, created 0750); refused if world-writable "
                                  "or owned by another user. Deployments sharing a host may share a folder of "
                                  "their group.")
    timing_lock_timeout: float = Field(
        default=300.0, gt=0, description="Seconds a job waits for the timing lock before it gives up and is retried "
                                         "later (a stuck holder must not hang every worker).")
    latency_warmup: int = Field(default=10, ge=0)
    latency_runs: int = Field(default=50, ge=3)
    flower_basic_auth: SecretStr | None = Field(default=None, description="user:password for Flower.")
    allow_example_passwords: bool = Field(
        default=False, description="Let workers, beat and Flower start with an example password (.env.example's, "
                                   "the docs'): for a throwaway demo only. Same as --allow-example-passwords.")
    flower_address: str = Field(default="127.0.0.1", description="Interface `modelpress flower` binds to.")
    flower_port: int = Field(default=5555, ge=1, le=65535, description="Port `modelpress flower` listens on.")
    # --- nightly recompression (docs/operations.md) ---
    nightly_schedule: str = Field(
        default="0 2 * * *",
        description="When beat submits the night's jobs: a 5-field crontab in UTC (minute hour day month "
                    "weekday), or a number of seconds (an interval, for tests); empty disables it.")
    # NoDecode: comma-separated in the environment ("mlp,digits_cnn"), not JSON.
    nightly_models: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="Models recompressed each night; empty means every registered model.")
    nightly_recipes: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("dynamic-int8",), description="Recipes (built-in names or files) applied each night.")
    nightly_backends: Annotated[tuple[str, ...], NoDecode] = Field(
        default=BACKENDS, description="Target backends each night.")
    regression_metric_drop: float = Field(
        default=0.005, ge=0, description="A night's metric may be this much (absolute) below the last good one.")
    regression_latency_increase: float = Field(
        default=0.20, ge=0, description="A night's median latency may be this fraction above the last good one.")
    regression_size_increase: float = Field(
        default=0.01, ge=0, description="A night's artifact may be this fraction larger than the last good one.")
    beat_lease_seconds: float = Field(
        default=60.0, gt=0, description="The scheduler lease: a beat silent this long is replaced by a standby.")
    reconcile_interval: float = Field(default=300.0, gt=0, description="Seconds between reconciler runs (beat).")
    queue_prefix: str = Field(default="", description="Redis key prefix, isolates deployments/tests.")
    # --- faults: reconciler, shutdown, per-job limits (docs/faults.md) ---
    reconcile_queued_grace: float = Field(
        default=600.0, gt=0,
        description="A queued job whose message is not in the broker is re-published once it has waited this "
                    "long since it was last published (so a backlog is not flooded with duplicates).")
    reconcile_queue: str | None = Field(
        default=None, description="Queue the periodic `modelpress.reconcile` task goes to: `ops` (the default, "
                                  "read by `modelpress ops-worker`) or a backend's queue. It needs no torch.")
    job_hard_limit_grace: int = Field(
        default=60, gt=0, description="Seconds between a recipe's own time_limit_s (soft) and the hard kill.")
    worker_soft_shutdown_timeout: float = Field(
        default=60.0, ge=0, description="On a cold shutdown (SIGQUIT), running jobs get this long to finish "
                                        "before they are cancelled and their messages returned to the queue.")
    emulated: str | None = Field(
        default=None, description="Set (e.g. `qemu-user`, by tools/arm-worker) when this worker's CPU is emulated: "
                                  "its rows are flagged and its latencies never compared with native ones.")
    worker_max_memory_per_child: int | None = Field(
        default=3 * 1024 * 1024, gt=0,
        description="KiB (Celery's unit): a child above this resident size is replaced after its current job.")
    # Issue 20 item 4 (docs/faults.md, "Memory ceiling"): ByteSize reads 1610612736, "1.5GiB", "8gib" ("8G" = 8e9).
    job_memory_limit: ByteSize | None = Field(
        default=None, ge=0,
        description="Memory one job may allocate in its worker child, beyond what the child held when the job "
                    "started; more fails the job, never retried. Unset: 80% of the host's memory (or its cgroup "
                    "limit) divided by the worker's concurrency. 0: no ceiling.")

    # --- database timeouts and the final write (docs/faults.md) ---
    db_connect_timeout: float = Field(
        default=10.0, ge=0, description="PostgreSQL: seconds to wait for a connection (0: libpq's default, none).")
    db_statement_timeout: float = Field(
        default=120.0, ge=0, description="PostgreSQL: a statement running longer fails (0: no limit).")
    db_lock_timeout: float = Field(
        default=30.0, ge=0, description="PostgreSQL: a statement waiting this long for a row lock fails (0: no limit).")
    result_write_attempts: int = Field(
        default=8, ge=1, description="Tries to record a computed result before giving it up (transient errors).")
    result_write_backoff: float = Field(
        default=0.5, gt=0, description="Seconds before the 2nd try of the result write; doubled each try, capped at 30.")
    # --- what users' data may decode to (docs/faults.md, "Decoded-size limits") ---
    decoded_limits: DecodedLimits = Field(
        default_factory=DecodedLimits,
        description="Each limit is its own MODELPRESS_MAX_* variable (MODELPRESS_MAX_IMAGE_PIXELS, ...), read by "
                    "optimize.limits on the worker too, which never imports this module.")

    @field_validator("reconcile_queue")
    @classmethod
    def _reconcile_queue_exists(cls, v: str | None) -> str | None:
        # A typo here would send every reconcile message to a queue nobody reads.
        if v is not None and v not in (*BACKENDS, "ops"):
            raise ValueError(f"MODELPRESS_RECONCILE_QUEUE {v!r} is not a queue; choose ops or one of: {', '.join(BACKENDS)}")
        return v

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, v: Path) -> Path:
        # kombu's filesystem transport silently resolves relative folders against each process's
        # cwd; an absolute home keeps producer and workers on the same folders.
        return Path(v).expanduser().resolve()

    @field_validator("factory_allowlist", "nightly_models", "nightly_recipes", "nightly_backends", mode="before")
    @classmethod
    def _split_allowlist(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(p.strip() for p in v.split(",") if p.strip())
        return v

    @field_validator("nightly_backends")
    @classmethod
    def _known_backends(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [b for b in v if b not in BACKENDS]
        if unknown:
            raise ValueError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
        return v

    @field_validator("nightly_schedule")
    @classmethod
    def _valid_schedule(cls, v: str) -> str:
        v = v.strip()
        if v and not _is_number(v) and len(v.split()) != 5:
            raise ValueError(f"MODELPRESS_NIGHTLY_SCHEDULE {v!r} is neither a 5-field crontab "
                             "(minute hour day month weekday, UTC) nor a number of seconds")
        return v

    @model_validator(mode="after")
    def _limits_are_ordered(self) -> "Settings":
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError("MODELPRESS_TASK_SOFT_TIME_LIMIT must be below MODELPRESS_TASK_TIME_LIMIT")
        return self

    @model_validator(mode="after")
    def _timing_lock_under_home(self) -> "Settings":
        # Computed once here so every reader (worker start check, the task) sees the same absolute folder.
        folder = self.timing_lock_dir or self.home / "timing-lock"
        object.__setattr__(self, "timing_lock_dir", Path(folder).expanduser().resolve())
        return self

    # --- derived values: computed, never stored twice ---
    def db_engine_options(self) -> dict[str, float]:
        """Keyword arguments of ``models_db.make_engine`` for this deployment's database timeouts.

        Example:
            >>> Settings(home="/tmp/mp-doc", db_lock_timeout=5).db_engine_options()["lock_timeout_s"]
            5.0
        """
        return {"connect_timeout_s": self.db_connect_timeout, "statement_timeout_s": self.db_statement_timeout,
                "lock_timeout_s": self.db_lock_timeout}

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'modelpress.db'}"

    @property
    def effective_artifact_store(self) -> str:
        return self.artifact_store or str(self.home / "artifacts")

    @property
    def is_embedded_broker(self) -> bool:
        return self.effective_broker_url.startswith("filesystem://")

    @property
    def visibility_timeout(self) -> int:
        # Above the hard limit, or Redis re-delivers a still-running job (field notes: 3 runs of a
        # 12 s task with a 5 s timeout).
        return self.task_time_limit + 600

    @property
    def is_embedded(self) -> bool:
        """True when the broker or the database is the embedded default (no MODELPRESS_BROKER_URL /
        MODELPRESS_DATABASE_URL): right for the demo on one machine, never for a deployment."""
        return self.broker_url is None or self.database_url is None

    def embedded_refusal(self, command: str) -> str | None:
        """Why ``command`` (worker, beat, ops-worker) must not start on the embedded default, or None.

        A worker on a deployment host that silently used its own SQLite file and filesystem broker would
        take no job and record nothing where anyone looks: refuse unless ``--embedded`` asks for it.

        Example:
            >>> print(Settings(home="/tmp/mp-doc").embedded_refusal("worker"))  # doctest: +ELLIPSIS
            `modelpress worker` would use the embedded ... pass --embedded to run on one machine
        """
        if not self.is_embedded:
            return None
        unset = [v for v, val in (("MODELPRESS_BROKER_URL", self.broker_url), ("MODELPRESS_DATABASE_URL",
                                                                                self.database_url)) if val is None]
        return (f"`modelpress {command}` would use the embedded {' and '.join(_EMBEDDED_PART[v] for v in unset)} "
                f"under {self.home} because {' and '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set; "
                "in a deployment that is never right (this process would see none of the jobs): set "
                f"{' and '.join(unset)}, or pass --embedded to run on one machine")

    def example_password_refusal(self, command: str) -> str | None:
        """One line saying why ``command`` must not start with these secrets, or None.

        A password from ``.env.example`` or the docs is known to everyone who read them (issue 20 item 8):
        refused unless ``allow_example_passwords`` (``--allow-example-passwords``) says this is a demo.

        Example:
            >>> Settings(home="/tmp/mp-doc", flower_basic_auth="admin:change-me-flower").example_password_refusal(
            ...     "flower")  # doctest: +ELLIPSIS
            '`modelpress flower` refuses to start: MODELPRESS_FLOWER_BASIC_AUTH holds an example password...'
        """
        if self.allow_example_passwords:
            return None
        found = list(dict.fromkeys(w.split(" ", 1)[0] for w in self.placeholder_secrets()))
        if not found:
            return None
        names = f"{', '.join(found[:-1])} and {found[-1]}" if len(found) > 1 else found[0]
        return (f"`modelpress {command}` refuses to start: {names} "
                f"{'holds an example password' if len(found) == 1 else 'hold example passwords'} (from .env.example or "
                "the docs, known to anyone); set a real one, or pass --allow-example-passwords "
                "(MODELPRESS_ALLOW_EXAMPLE_PASSWORDS=1) for a throwaway demo")

    def placeholder_secrets(self) -> list[str]:
        """Warnings for secrets still set to an example value (``.env.example``, ``admin:admin``).

        Example:
            >>> Settings(home="/tmp/mp-doc", flower_basic_auth="admin:admin").placeholder_secrets()
            ['MODELPRESS_FLOWER_BASIC_AUTH holds a placeholder password (pair 1); set a real one']
        """
        from urllib.parse import urlsplit

        out: list[str] = []
        if self.flower_basic_auth is not None:
            for i, pair in enumerate(self.flower_basic_auth.get_secret_value().split(","), start=1):
                user, _, password = pair.strip().partition(":")
                if not user or not password:
                    continue  # malformed: refused with its own error, which never echoes the value either
                if _is_placeholder(password) or password == user:
                    # Never echo a credential, not even a weak one: logs travel further than secrets should.
                    out.append(f"MODELPRESS_FLOWER_BASIC_AUTH holds a placeholder password (pair {i}); set a real one")
        for var, url in (("MODELPRESS_DATABASE_URL", self.database_url), ("MODELPRESS_BROKER_URL", self.broker_url)):
            try:
                user, password = (urlsplit(url).username, urlsplit(url).password) if url else (None, None)
            except ValueError:
                user, password = None, None
            if password is not None and (_is_placeholder(password) or password == user):
                out.append(f"{var} holds a placeholder password; set a real one")
        return out

    def broker_folders(self) -> dict[str, str]:
        """Absolute folders for kombu's filesystem transport (all four, control included)."""
        base = self.home / "broker"
        return {
            "data_folder_in": str(base / "queue"),
            "data_folder_out": str(base / "queue"),
            "processed_folder": str(base / "processed"),
            "control_folder": str(base / "control"),
        }

    def redacted(self) -> dict[str, object]:
        """Settings fit for a log line: passwords in URLs and secrets are masked."""
        from sqlalchemy.engine import make_url

        out: dict[str, object] = {}
        for k, v in self.model_dump().items():
            if isinstance(v, SecretStr):
                v = "***" if v.get_secret_value() else None
            out[k] = v
        out["database_url"] = make_url(self.effective_database_url).render_as_string(hide_password=True)
        out["broker_url"] = _mask_url(self.effective_broker_url)
        return out


_EMBEDDED_PART = {"MODELPRESS_BROKER_URL": "filesystem broker", "MODELPRESS_DATABASE_URL": "SQLite database"}
# Example values from .env.example, the docs and common defaults: a deployment must replace them.
# Refused at the start of a worker, beat or Flower unless --allow-example-passwords (issue 20 item 8).
_PLACEHOLDERS = ("change-me", "changeme", "changeit", "secret", "password", "passwd", "pass", "admin", "example",
                 "s3cret", "postgres", "modelpress", "redis", "guest")


def _is_placeholder(password: str) -> bool:
    p = password.strip().lower()
    return not p or p in _PLACEHOLDERS or p.startswith(("change-me", "changeme"))


def _is_number(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def _mask_url(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url

"""One typed settings object, read from the environment (``MODELPRESS_*``).

The defaults are the *embedded* setup: a SQLite file and kombu's ``filesystem://`` broker under
``MODELPRESS_HOME``, so the demo needs no server. Production sets ``MODELPRESS_BROKER_URL=redis://...``
and ``MODELPRESS_DATABASE_URL=postgresql+psycopg://...``.

Example:
    >>> from modelpress.settings import Settings
    >>> s = Settings(home="/tmp/mp-doc")
    >>> s.database_url.startswith("sqlite:///")
    True
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    factory_allowlist: tuple[str, ...] = Field(
        default=(), description="Module prefixes whose `module:function` model factories may be loaded."
    )
    max_weights_bytes: int = Field(default=2 * 1024**3, gt=0, description="Refuse larger weight files.")
    worker_threads: int = Field(default=1, ge=1, description="torch threads per worker child.")
    worker_concurrency: int = Field(default=1, ge=1)
    task_soft_time_limit: int = Field(default=1800, gt=0, description="Seconds; SoftTimeLimitExceeded.")
    task_time_limit: int = Field(default=2100, gt=0, description="Seconds; the child is killed.")
    max_attempts: int = Field(default=3, ge=1, description="Deliveries before a job is failed for good.")
    heartbeat_interval: float = Field(default=5.0, gt=0, description="Seconds between heartbeats of a running job.")
    heartbeat_stale_after: float = Field(default=60.0, gt=0, description="A running job silent this long is lost.")
    latency_warmup: int = Field(default=10, ge=0)
    latency_runs: int = Field(default=50, ge=3)
    flower_basic_auth: SecretStr | None = Field(default=None, description="user:password for Flower.")
    queue_prefix: str = Field(default="", description="Redis key prefix, isolates deployments/tests.")

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, v: Path) -> Path:
        # kombu's filesystem transport silently resolves relative folders against each process's
        # cwd; an absolute home keeps producer and workers on the same folders.
        return Path(v).expanduser().resolve()

    @field_validator("factory_allowlist", mode="before")
    @classmethod
    def _split_allowlist(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(p.strip() for p in v.split(",") if p.strip())
        return v

    @model_validator(mode="after")
    def _limits_are_ordered(self) -> "Settings":
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError("MODELPRESS_TASK_SOFT_TIME_LIMIT must be below MODELPRESS_TASK_TIME_LIMIT")
        return self

    # --- derived values: computed, never stored twice ---
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


def _mask_url(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url

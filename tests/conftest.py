"""Shared fixtures: real Redis, real PostgreSQL, real worker processes.

A service that is down fails the test (it is never skipped): ``.ci/run`` starts Redis and PostgreSQL
before the suite, and a developer without them sees at once what to start.
"""

from __future__ import annotations

import contextlib
import os

# One OpenBLAS thread in the test process, set before anything imports numpy. In the full suite on an AMX host the
# causal-LM auto test (NNCF weight compression, numpy matmul) hung twice in OpenBLAS's exec_blas with its thread
# pool gone: a fork while a BLAS call runs shuts the pool down under the caller (a known OpenBLAS hazard). With one
# thread there is no pool to lose.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

REDIS_URL = os.environ.get("MODELPRESS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[1]
# The tests' PostgreSQL role (tools/test-services creates it): LOGIN CREATEDB with a password, never `trust`.
PG_TEST_ROLE = "modelpress_test"
PG_PASSWORD_FILE = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "modelpress" / \
    "test-pg-password"


def pg_test_password() -> str | None:
    """``MODELPRESS_TEST_PG_PASSWORD``, else the one tools/test-services generated; None before it ran."""
    if os.environ.get("MODELPRESS_TEST_PG_PASSWORD"):
        return os.environ["MODELPRESS_TEST_PG_PASSWORD"]
    try:
        return PG_PASSWORD_FILE.read_text().strip() or None
    except OSError:
        return None


def _pg_admin_url() -> str:
    if os.environ.get("MODELPRESS_TEST_PG_URL"):
        return os.environ["MODELPRESS_TEST_PG_URL"]
    from urllib.parse import quote

    password = pg_test_password()
    auth = PG_TEST_ROLE + (f":{quote(password, safe='')}" if password else "")
    return f"postgresql+psycopg://{auth}@127.0.0.1:5432/postgres"


PG_ADMIN_URL = _pg_admin_url()


def _require_redis() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({e}); start it (see .ci/run) — queue tests need a real broker")


@pytest.fixture(scope="session")
def redis_url() -> str:
    _require_redis()
    return REDIS_URL


@contextlib.contextmanager
def fresh_pg_database(prefix: str) -> Iterator[str]:
    """Create an empty PostgreSQL database, yield its URL, then drop it (connections terminated)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # noqa: BLE001
        admin.dispose()
        pytest.fail(f"PostgreSQL is not reachable as {PG_TEST_ROLE} at 127.0.0.1:5432 ({e}); run tools/test-services "
                    "(it starts PostgreSQL and creates the role), or set MODELPRESS_TEST_PG_URL")
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    with fresh_pg_database("mp_test") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each database test runs on SQLite and on PostgreSQL (its own empty database)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    with fresh_pg_database("mp_t") as url:
        yield url


class Workers:
    """Real ``modelpress worker`` processes sharing one environment; stopped at teardown."""

    def __init__(self, env: dict[str, str], home: Path) -> None:
        self.env, self.home = env, home
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, backend: str, *, name: str | None = None, concurrency: int = 1,
              extra_env: dict[str, str] | None = None, wait: bool = True) -> subprocess.Popen[bytes]:
        name = name or backend
        log = open(self.home / f"worker-{name}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelpress", "worker", "--backend", backend, "--concurrency", str(concurrency)],
            env={**self.env, **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.procs[name] = proc
        if wait:
            self.wait_ready(name)
        return proc

    def log(self, name: str) -> str:
        return (self.home / f"worker-{name}.log").read_text(errors="replace")

    def wait_ready(self, name: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise AssertionError(f"worker {name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")
            if " ready." in self.log(name):
                return
            time.sleep(0.2)
        raise AssertionError(f"worker {name} not ready after {timeout} s:\n{self.log(name)[-3000:]}")

    def stop(self, name: str, timeout: float = 30) -> None:
        from modelpress.cli import stop_worker_process

        stop_worker_process(self.procs.pop(name), timeout)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def queue_env(home: Path, *, broker: str, database: str, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPRESS_")}
    env.update({
        "MODELPRESS_HOME": str(home),
        "MODELPRESS_BROKER_URL": broker,
        "MODELPRESS_DATABASE_URL": database,
        "MODELPRESS_QUEUE_PREFIX": prefix,
        # Queue tests check routing and rows, not timing: few latency runs keep them quick.
        "MODELPRESS_LATENCY_WARMUP": "1",
        "MODELPRESS_LATENCY_RUNS": "5",
        "MODELPRESS_HEARTBEAT_INTERVAL": "1",
        "MODELPRESS_HEARTBEAT_STALE_AFTER": "10",
    })
    return env


@pytest.fixture
def queue(tmp_path: Path, redis_url: str) -> Iterator[tuple[dict[str, str], Workers]]:
    """Redis broker (an isolated key prefix) + PostgreSQL job table + a Workers launcher."""
    from modelpress.models_db.migrate import upgrade

    with fresh_pg_database("mp_q") as db:
        upgrade(db)
        env = queue_env(tmp_path, broker=redis_url, database=db, prefix=f"mptest-{uuid.uuid4().hex[:8]}:")
        workers = Workers(env, tmp_path)
        try:
            yield env, workers
        finally:
            workers.stop_all()


def settings_from_env(env: dict[str, str]):  # type: ignore[no-untyped-def]
    """The Settings a process started with ``env`` would read."""
    from modelpress.settings import Settings

    kwargs = {k[len("MODELPRESS_"):].lower(): v for k, v in env.items() if k.startswith("MODELPRESS_")}
    return Settings(**kwargs)


def submit_manifest(env: dict[str, str], workers: Workers, manifest: Path, *, backend: str = "fbgemm") -> list[str]:
    """Start a ``backend`` worker, submit ``manifest`` with the CLI as a user would, and return its jobs' ids once
    the worker is ready (submitted while it starts: the queue holds them)."""
    from modelpress.models_db import list_jobs, make_engine, make_sessionmaker

    workers.start(backend, wait=False)
    sub = subprocess.run([sys.executable, "-m", "modelpress", "submit", str(manifest)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert sub.returncode == 0, sub.stderr
    workers.wait_ready(backend)
    engine = make_engine(settings_from_env(env).effective_database_url)
    try:
        with make_sessionmaker(engine)() as s:
            return [j.id for j in list_jobs(session=s, batch_id=sub.stdout.strip(), limit=None)]
    finally:
        engine.dispose()


def hostname() -> str:
    return socket.gethostname()


# ----------------------------------------------------------------------------- torch-layer tests
@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for a test module; tests/optimize and tests/zoo turn it on for every module.

    Module scope: it must be in force before the module-scoped fixtures that train or load models
    (two OpenMP threads on two shared cores ran training several times slower).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def builtin_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The cache_dir handed to materialize, shared by every test file of the session. Nothing is trained or
    # written here any more: built-ins load weights shipped as package data (digits_cnn, seq_lstm, seq_gru) or
    # draw them from a seed (mlp) (tests/zoo/test_builtin_weights.py checks that nothing lands in a cache dir).
    return tmp_path_factory.getbasetemp() / "builtin-cache"

"""Fault-test harness: real worker processes, real Redis and PostgreSQL, faults injected for real.

- ``stack``: the shared Redis (own key prefix) + a fresh database on the shared PostgreSQL, short
  heartbeats, the test model factories allow-listed, a ledger of executions, and a ``Workers`` launcher.
- ``RedisServer`` / ``PostgresCluster``: throwaway servers on free ports, for faults that restart the
  broker or the database (the shared ones on 6379/5432 are never touched).
- ``assert_each_job_finished_once``: the check every fault test ends with: every job is in the table,
  finished, with the expected status, ran once per claim, recorded at most once, one artifact each.

Every subprocess has a timeout and is killed (its whole process group) in ``finally``.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import pytest

from tests.conftest import PG_ADMIN_URL, ROOT, Workers, queue_env, settings_from_env

MODELS = "tests.faults.models"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    from tests.faults.record import record_outcome

    record_outcome(report)
FINISHED = ("succeeded", "failed", "rejected")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, *, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Signal a process started with ``start_new_session=True`` and everything it forked; reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


# ----------------------------------------------------------------------------- throwaway servers
class RedisServer:
    """``redis-server`` on a free port, nothing on disk (as the production-like Redis here runs)."""

    def __init__(self, workdir: Path, *, password: str | None = None) -> None:
        self.port, self.password, self.dir = free_port(), password, workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
                "--dir", str(self.dir)]
        if self.password:
            args += ["--requirepass", self.password]
        log = open(self.dir / "redis.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self.ping, timeout=15, what=f"redis on port {self.port}")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_connect_timeout=1).ping())
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)
            self.proc = None

    def restart(self, down_for: float = 1.0) -> None:
        """Kill -9 and start again on the same port: without persistence, every message is gone."""
        self.stop()
        time.sleep(down_for)
        self.start()

    def __enter__(self) -> "RedisServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PostgresCluster:
    """A private PostgreSQL cluster (``initdb`` + ``pg_ctl``) on a free port, run as the postgres user."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if not bins:
            pytest.fail("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin")
        self.bin = bins[-1]
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="mp-pg-"))
        self.data = self.base / "data"
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.base / "pg.log"), "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def restart(self, down_for: float = 2.0) -> None:
        """Stop (dropping every connection), stay down ``down_for`` seconds, start again."""
        self.stop("immediate")
        time.sleep(down_for)
        self.start()

    def __enter__(self) -> "PostgresCluster":
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", timeout=120)
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop("immediate")
        except Exception:  # noqa: BLE001 - already down; kill whatever is left below
            pid_file = self.data / "postmaster.pid"
            if pid_file.is_file():
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        shutil.rmtree(self.base, ignore_errors=True)


def delete_keys(redis_url: str, prefix: str) -> None:
    """Remove every key under ``prefix`` (a test's queues, bindings, unacked messages) from a shared Redis."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
    except Exception:  # noqa: BLE001 - a private Redis may be gone already; nothing to clean there
        pass
    finally:
        client.close()


def create_database(admin_url: str) -> tuple[str, Any]:
    """A fresh, migrated database on the server of ``admin_url``; returns (url, drop function)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from modelpress.models_db.migrate import upgrade

    name = f"mp_f_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    upgrade(url)

    def drop() -> None:
        try:
            with admin.connect() as c:
                c.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        finally:
            admin.dispose()

    return url, drop


# ----------------------------------------------------------------------------- the stack
@dataclass
class Stack:
    """One isolated deployment: environment, settings, workers, and the checks of the job table."""

    env: dict[str, str]
    home: Path
    workers: Workers
    ledger: Path
    submitted: list[str] = field(default_factory=list)

    @property
    def settings(self):  # type: ignore[no-untyped-def]
        return settings_from_env(self.env)

    def submit(self, model: str, n: int = 1, *, tag: str = "j", recipe: dict[str, Any] | None = None,
               backend: str = "fbgemm") -> list[str]:
        """Submit ``n`` jobs of ``tests.faults.models:<model>``, each with its own recipe (own artifact)."""
        from modelpress.api import Producer
        from modelpress.optimize.recipes import Recipe

        producer = Producer(self.settings)
        try:
            reqs = [producer.validate(model=f"{MODELS}:{model}", backend=backend,
                                      recipe=Recipe.from_dict({"name": f"{tag}-{i}-{uuid.uuid4().hex[:6]}",
                                                               "steps": [{"type": "quantize_dynamic"}],
                                                               **(recipe or {})}))
                    for i in range(n)]
            ids = producer.submit_many(reqs)
        finally:
            producer.close()
        self.submitted += ids
        return ids

    def rows(self, ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        from modelpress.cli import _rows

        return {r["id"]: r for r in _rows(self.settings, ids=list(ids) if ids is not None else None, limit=None)}

    def wait_finished(self, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        def done() -> dict[str, dict[str, Any]] | None:
            try:
                rows = self.rows(ids)
            except Exception:  # noqa: BLE001 - the database may be the fault being injected
                return None
            return rows if len(rows) == len(ids) and all(r["status"] in FINISHED for r in rows.values()) else None

        try:
            return wait_until(done, timeout=timeout, interval=0.5, what=f"{len(ids)} job(s) to finish")
        except AssertionError:
            states = {i[:8]: (r["status"], r["attempts"], r["error"]) for i, r in self.rows(ids).items()}
            raise AssertionError(f"jobs not finished after {timeout} s: {states}\n{self.tail_logs()}") from None

    def wait_running(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        """Wait until ``job_id`` is running *and* its model code has started (ledger), return its row."""
        def running() -> dict[str, Any] | None:
            row = self.rows([job_id]).get(job_id)
            started = any(line.startswith(job_id) for line in self.ledger_lines())
            return row if row and row["status"] == "running" and started else None

        return wait_until(running, timeout=timeout, what=f"job {job_id[:8]} to be running")

    def ledger_lines(self) -> list[str]:
        return self.ledger.read_text().splitlines() if self.ledger.is_file() else []

    def executions(self) -> Counter[str]:
        """How many times each job's model code started, across every process."""
        return Counter(line.split()[0] for line in self.ledger_lines() if line.split()[2] == "start")

    def all_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.home.glob("worker-*.log")))

    def tail_logs(self, n: int = 3000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-n:]}" for p in sorted(self.home.glob("worker-*.log")))

    def child_pid(self, row: dict[str, Any]) -> int:
        # claim_token is "<node name>/<child pid>/<nonce>".
        return int(row["claim_token"].split("/")[1])

    def start_ops_worker(self) -> None:
        """``modelpress ops-worker``: consumes the ``ops`` queue, where beat's reconcile messages go."""
        log = open(self.home / "worker-ops.log", "ab")
        self.workers.procs["ops"] = subprocess.Popen([sys.executable, "-m", "modelpress", "ops-worker"], env=self.env,
                                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.workers.wait_ready("ops")

    def beat(self, every: float = 2.0) -> "Beat":
        """Send ``modelpress.reconcile`` every ``every`` seconds, by name, as beat does."""
        return Beat(self, every)

    def assert_each_job_finished_once(self, expected: dict[str, str], *, fault: str, injected: int = 1,
                                      claims_equal_executions: bool = True) -> dict[str, dict[str, Any]]:
        """The end of every fault test: nothing lost, nothing run twice, nothing recorded twice.

        - the table holds exactly the submitted jobs, each finished with its expected status;
        - each job's model code started once per claim (``attempts``), never without one;
        - no job's result was recorded twice ("recorded" lines across all worker logs);
        - one artifact file per succeeded job, and no artifact file without a job.
        """
        from tests.faults.record import record

        rows = self.rows()
        runs = self.executions()
        recorded = Counter(re.findall(r"job ([0-9a-f]{32}): recorded ", self.all_logs()))
        store = Path(self.settings.effective_artifact_store)
        files = sorted(str(p) for sub in ("artifacts", "rejected") for p in (store / sub).glob("*.mpz"))
        produced = sorted(r["artifact_uri"] for r in rows.values() if r["status"] in ("succeeded", "rejected"))
        # Counted before asserting, so the table shows what happened even when a check fails.
        lost = len(set(self.submitted) - set(rows)) + sum(r["status"] not in FINISHED for r in rows.values())
        duplicates = (sum(n - 1 for n in recorded.values() if n > 1) + max(0, len(files) - len(set(produced)))
                      + sum(max(0, runs[j] - r["attempts"]) for j, r in rows.items()))
        record("fault", fault=fault, injected=injected, jobs=len(self.submitted), lost=lost, duplicates=duplicates,
               statuses=dict(Counter(str(getattr(r["status"], "value", r["status"])) for r in rows.values())))
        assert set(rows) == set(self.submitted), "jobs lost or invented"
        assert set(expected) <= set(rows)
        for job_id, status in expected.items():
            row = rows[job_id]
            assert row["status"] == status, (job_id[:8], row["status"], row["error"])
        for job_id, row in rows.items():
            if claims_equal_executions:
                assert runs[job_id] == row["attempts"], (job_id[:8], runs[job_id], row["attempts"])
            else:
                assert runs[job_id] <= row["attempts"], (job_id[:8], runs[job_id], row["attempts"])
        assert all(n == 1 for n in recorded.values()), {k[:8]: n for k, n in recorded.items() if n != 1}
        for job_id, row in rows.items():
            if row["status"] == "succeeded":
                assert recorded[job_id] == 1, job_id[:8]
        assert files == produced, "an artifact without a job, or a job without its artifact"
        assert len(set(produced)) == len(produced), "two jobs share one artifact"
        return rows


class Beat:
    """A stand-in for celery beat: publishes ``modelpress.reconcile`` periodically from a thread."""

    def __init__(self, stack: Stack, every: float) -> None:
        self.stack, self.every = stack, every
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self.sent = 0

    def _run(self) -> None:
        from modelpress.reconcile import RECONCILE_TASK
        from modelpress.workers.app import make_app

        app = make_app(self.stack.settings)
        try:
            while not self._stop.wait(self.every):
                try:
                    app.send_task(RECONCILE_TASK, expires=self.every)  # as beat's entry does
                    self.sent += 1
                except Exception:  # noqa: BLE001 - the broker may be the fault; beat keeps ticking
                    pass
        finally:
            app.close()

    def __enter__(self) -> "Beat":
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(timeout=10)


def fault_env(home: Path, *, broker: str, database: str, prefix: str) -> dict[str, str]:
    """``queue_env`` plus the test model factories and short heartbeats, grace periods and limits.

    Example:
        >>> fault_env(Path("/tmp/h"), broker="redis://x", database="sqlite://", prefix="p:")["MODELPRESS_HEARTBEAT_STALE_AFTER"]
        '4'
    """
    env = queue_env(home, broker=broker, database=database, prefix=prefix)
    env.update({
        # The test model factories are importable from the repository root, and allow-listed.
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "MODELPRESS_FACTORY_ALLOWLIST": f"{MODELS},tests.bad_input",
        "MODELPRESS_LATENCY_WARMUP": "0",
        "MODELPRESS_LATENCY_RUNS": "3",
        # Short heartbeats make a dead worker visible in seconds instead of a minute.
        "MODELPRESS_HEARTBEAT_INTERVAL": "0.5",
        "MODELPRESS_HEARTBEAT_STALE_AFTER": "4",
        "MODELPRESS_RECONCILE_QUEUED_GRACE": "3",
        "MODELPRESS_JOB_HARD_LIMIT_GRACE": "3",
        "MODELPRESS_WORKER_SOFT_SHUTDOWN_TIMEOUT": "1",
        "MP_FAULT_LEDGER": str(home / "ledger.txt"),
        "MP_FAULT_SLOW_S": "4",
    })
    return env


@pytest.fixture
def make_stack(tmp_path: Path, redis_url: str, pg_url: str) -> Iterator[Any]:
    """``make_stack(broker=None, pg_admin=None)`` → a ``Stack``; all its workers are killed at teardown."""
    made: list[tuple[Stack, Any]] = []

    def make(*, broker: str | None = None, pg_admin: str | None = None) -> Stack:
        home = tmp_path / f"stack{len(made)}"
        home.mkdir()
        db, drop = create_database(pg_admin or PG_ADMIN_URL)
        env = fault_env(home, broker=broker or redis_url, database=db, prefix=f"mpfault-{uuid.uuid4().hex[:8]}:")
        stack = Stack(env=env, home=home, workers=Workers(env, home), ledger=home / "ledger.txt")
        made.append((stack, drop))
        return stack

    try:
        yield make
    finally:
        for stack, drop in made:
            for name in list(stack.workers.procs):
                kill_group(stack.workers.procs.pop(name))
            delete_keys(stack.env["MODELPRESS_BROKER_URL"], stack.env["MODELPRESS_QUEUE_PREFIX"])
            try:
                drop()
            except Exception:  # noqa: BLE001 - a private cluster may already be gone
                pass


@pytest.fixture
def stack(make_stack: Any) -> Stack:
    return make_stack()



"""One isolated deployment for the whole bad-input module: the shared Redis (own key prefix), a fresh
database, and one real worker started on first use, so each case costs a job, not a worker start.

The producer and the worker are configured differently on purpose, as two machines can be:
- the producer allow-lists ``tests.bad_input`` (so a row naming ``tests.bad_input.evil_factory`` can be
  written), the worker only ``tests.faults.models`` (so it must refuse that row at run time);
- the producer accepts weights up to 1 MiB, the worker only up to 64 KiB (a file staged under a higher
  limit is still refused by the worker).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import PG_ADMIN_URL, Workers, settings_from_env
from tests.faults.conftest import FINISHED, create_database, delete_keys, fault_env, kill_group, wait_until

WORKER_MAX_WEIGHTS = 64 * 1024


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    from tests.faults.record import record_outcome

    record_outcome(report)
PRODUCER_MAX_WEIGHTS = 1024 * 1024


@dataclass
class Site:
    env: dict[str, str]
    home: Path
    workers: Workers

    @property
    def worker_settings(self):  # type: ignore[no-untyped-def]
        return settings_from_env(self.env)

    @property
    def settings(self):  # type: ignore[no-untyped-def]
        """The producer's settings (see the module docstring for how they differ from the worker's)."""
        return self.worker_settings.model_copy(update={
            "factory_allowlist": ("tests.faults.models", "tests.bad_input"),
            "max_weights_bytes": PRODUCER_MAX_WEIGHTS})

    def worker(self) -> None:
        if "fbgemm" not in self.workers.procs:
            self.workers.start("fbgemm")

    def producer(self):  # type: ignore[no-untyped-def]
        from modelpress.api import Producer

        return Producer(self.settings)

    def count_rows(self) -> int:
        from modelpress.cli import _rows

        return len(_rows(self.settings, limit=None))

    def insert_and_publish(self, **columns: Any) -> str:
        """Write a queued row directly and publish its message: what another producer, a manifest tool or a
        tampered database could hand a worker, past every submit-time check."""
        from modelpress.models_db import create_job, make_engine, make_sessionmaker
        from modelpress.workers.app import job_message_options, make_app
        from modelpress.workers.routing import OPTIMIZE_TASK

        row = {"model_name": "tests.faults.models:quick_spec", "recipe_name": "r",
               "recipe_json": '{"name":"r","steps":[{"type":"quantize_dynamic"}]}', "recipe_sha256": "0" * 64,
               "backend": "fbgemm", **columns}
        engine = make_engine(self.settings.effective_database_url)
        try:
            with make_sessionmaker(engine)() as s:
                job_id = create_job(session=s, **row).id
        finally:
            engine.dispose()
        app = make_app(self.settings)
        try:
            app.send_task(OPTIMIZE_TASK, args=[job_id],
                          **job_message_options(self.settings, backend="fbgemm", time_limit_s=None))
        finally:
            app.close()
        return job_id

    def wait_finished(self, ids: list[str], timeout: float = 120) -> dict[str, dict[str, Any]]:
        from modelpress.cli import _rows

        def done() -> dict[str, dict[str, Any]] | None:
            rows = {r["id"]: r for r in _rows(self.settings, ids=ids, limit=None)}
            return rows if len(rows) == len(ids) and all(r["status"] in FINISHED for r in rows.values()) else None

        return wait_until(done, timeout=timeout, interval=0.3, what=f"{len(ids)} job(s) to finish")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, redis_url: str, pg_url: str) -> Iterator[Site]:
    home = tmp_path_factory.mktemp("bad-input")
    db, drop = create_database(PG_ADMIN_URL)
    env = fault_env(home, broker=redis_url, database=db, prefix=f"mpbad-{uuid.uuid4().hex[:8]}:")
    env.update({
        "MODELPRESS_FACTORY_ALLOWLIST": "tests.faults.models",
        "MODELPRESS_MAX_WEIGHTS_BYTES": str(WORKER_MAX_WEIGHTS),
        "MP_EVIL_MARKER": str(home / "evil-factory-was-imported"),
    })
    workers = Workers(env, home)
    try:
        yield Site(env=env, home=home, workers=workers)
    finally:
        for name in list(workers.procs):
            kill_group(workers.procs.pop(name))
        delete_keys(redis_url, env["MODELPRESS_QUEUE_PREFIX"])
        drop()

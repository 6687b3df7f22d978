"""The task's progress callback: throttled, last report kept, never in the step's way (issue 22 item 3).

The database and the broker are replaced by recorders here: what is under test is the timing and the
error handling of ``_Progress``. tests/tasks/test_job_progress.py runs the same path through a real worker,
Redis and PostgreSQL.
"""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import pytest
import torch
from sqlalchemy.exc import OperationalError

from modelpress.tasks import optimize_job
from modelpress.tasks.optimize_job import PROGRESS_MAX_BYTES, _event_fields, _Progress, progress_payload


@pytest.fixture
def recorded(monkeypatch):
    """(rows, events): what ``_Progress`` wrote to the row and sent as events, with the time of each."""
    rows: list[tuple[float, dict]] = []
    events: list[dict] = []
    monkeypatch.setattr(optimize_job, "record_progress",
                        lambda *, session, job_id, token, progress: rows.append((time.monotonic(), progress)) or True)
    monkeypatch.setattr(_Progress, "_send_event", lambda self, payload: events.append(payload))
    return rows, events


def _reporter(min_interval: float = 0.5) -> _Progress:
    task = SimpleNamespace(app=None, request=SimpleNamespace(id="task-1", hostname="fbgemm-1@h"))
    return _Progress(task, sessions=lambda: _NoSession(), job_id="job-1", token="T", min_interval=min_interval)


class _NoSession:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_reports_faster_than_the_interval_are_written_at_most_once_per_interval_and_the_last_one_always(recorded):
    rows, events = recorded
    t0 = time.monotonic()
    with _reporter(min_interval=0.5) as report:
        for i in range(1, 61):
            report({"iteration": i})
            time.sleep(0.02)  # 60 reports in ~1.2 s
    took = time.monotonic() - t0
    gaps = [b - a for (a, _), (b, _) in zip(rows, rows[1:])]
    assert len(rows) <= 2 + took / 0.5
    assert all(g >= 0.45 for g in gaps[:-1]), gaps  # the final write on exit may come sooner
    written = [p["iteration"] for _, p in rows]
    assert written == sorted(written) and written[-1] == 60
    assert [p for _, p in rows] == events


def test_the_step_never_waits_for_the_database(recorded, monkeypatch):
    rows, _ = recorded
    monkeypatch.setattr(optimize_job, "record_progress",
                        lambda **kw: time.sleep(1.0) or rows.append((time.monotonic(), kw["progress"])))
    with _reporter() as report:
        t0 = time.monotonic()
        for i in range(20):
            report({"iteration": i})
        assert time.monotonic() - t0 < 0.1


def test_a_database_outage_is_logged_once_and_neither_the_step_nor_the_event_is_stopped(recorded, monkeypatch, caplog):
    _, events = recorded

    def down(**_):
        raise OperationalError("UPDATE jobs", {}, Exception("connection refused"))

    monkeypatch.setattr(optimize_job, "record_progress", down)
    with caplog.at_level(logging.WARNING, logger=optimize_job.__name__), _reporter(min_interval=0.05) as report:
        for i in range(10):
            report({"iteration": i})
            time.sleep(0.03)
    warnings = [r.getMessage() for r in caplog.records if "could not write progress" in r.getMessage()]
    assert len(warnings) == 1 and "OperationalError" in warnings[0]
    assert events and events[-1] == {"iteration": 9}


def test_a_report_that_is_not_a_dict_is_ignored_with_a_warning(recorded, caplog):
    rows, _ = recorded
    with caplog.at_level(logging.WARNING, logger=optimize_job.__name__), _reporter() as report:
        report(42)  # type: ignore[arg-type]
    assert rows == [] and "not a dict" in caplog.text


def test_a_report_is_stored_as_plain_json_and_an_oversized_one_not_at_all():
    assert progress_payload({"loss": torch.tensor(0.5), "lr": float("inf"), "by_layer": [float("nan"), 1],
                             "device": torch.device("cpu")}) == \
        {"loss": 0.5, "lr": "inf", "by_layer": ["nan", 1], "device": "cpu"}
    assert progress_payload({"log": "x" * PROGRESS_MAX_BYTES}) is None


def test_keys_that_would_rename_or_break_the_task_in_flower_stay_out_of_the_event():
    fields = _event_fields({"iteration": 3, "of": 9, "name": "x", "state": "y", "worker": "w", "runtime": 1.0,
                            "uuid": "u", "hostname": "h", "type": "t", "retry": True})
    assert fields == {"iteration": 3, "of": 9}

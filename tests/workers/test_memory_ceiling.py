"""The per-job memory ceiling's parts: its default, its setting, what counts as hitting it, and the real limit.

The end-to-end behaviour (real workers, a job asking 6 GiB under a 1.5 GiB ceiling) is in
tests/faults/test_memory_ceiling.py.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest

from modelpress.errors import ModelLoadError, UserInputError
from modelpress.settings import Settings
from modelpress.workers.memory import (
    JobMemoryGuard,
    allocation_failure,
    describe_ceiling,
    host_memory_bytes,
    lost_child_reason,
    mark_path,
    near_mark,
    prepare_marks_dir,
    resolve_ceiling,
)

GiB = 1024**3


def test_unset_the_ceiling_is_eighty_percent_of_the_host_memory_shared_by_the_worker_children():
    assert resolve_ceiling(None, concurrency=1, host_bytes=24 * GiB) == int(0.8 * 24 * GiB)
    assert resolve_ceiling(None, concurrency=2, host_bytes=24 * GiB) == int(0.8 * 12 * GiB)
    assert resolve_ceiling(None, concurrency=4, host_bytes=None) == 0  # unknown memory: no guess


def test_a_configured_ceiling_is_used_as_given_and_zero_turns_it_off():
    assert resolve_ceiling(3 * GiB, concurrency=8, host_bytes=4 * GiB) == 3 * GiB
    assert resolve_ceiling(0, concurrency=1, host_bytes=24 * GiB) == 0
    assert describe_ceiling(0, concurrency=1, host_bytes=24 * GiB) == \
        "job memory ceiling: none (MODELPRESS_JOB_MEMORY_LIMIT=0)"


def test_the_setting_reads_sizes_with_units_and_refuses_negative_ones(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELPRESS_JOB_MEMORY_LIMIT", "1.5GiB")
    assert Settings(home=tmp_path).job_memory_limit == int(1.5 * GiB)
    monkeypatch.setenv("MODELPRESS_JOB_MEMORY_LIMIT", "8G")  # SI: 8e9, as pydantic's ByteSize reads it
    assert Settings(home=tmp_path).job_memory_limit == 8_000_000_000
    monkeypatch.setenv("MODELPRESS_JOB_MEMORY_LIMIT", "0")
    assert Settings(home=tmp_path).job_memory_limit == 0
    monkeypatch.delenv("MODELPRESS_JOB_MEMORY_LIMIT")
    assert Settings(home=tmp_path).job_memory_limit is None
    with pytest.raises(ValueError, match="job_memory_limit"):
        Settings(home=tmp_path, job_memory_limit=-1)


def test_this_host_reports_its_memory():
    with open("/proc/meminfo") as f:
        total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    assert 0 < host_memory_bytes() <= total


def test_a_refused_allocation_is_recognised_however_it_was_wrapped():
    torch_error = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 6442450944 bytes. Error code 12 (Cannot allocate memory)")
    assert allocation_failure(torch_error) == (True, 6442450944)
    assert allocation_failure(MemoryError()) == (True, None)
    assert allocation_failure(OSError(errno.ENOMEM, "Cannot allocate memory"))[0]
    try:
        try:
            raise torch_error
        except RuntimeError as inner:
            raise ModelLoadError("weights file w.pt could not be read") from inner
    except ModelLoadError as wrapped:
        assert allocation_failure(wrapped) == (True, 6442450944)
    # Loader messages that only name the error, without chaining it, are recognised by their text.
    assert allocation_failure(UserInputError("could not read (RuntimeError: std::bad_alloc)"))[0]


def test_ordinary_failures_are_not_taken_for_the_ceiling():
    for exc in (ValueError("weights do not fit the architecture"), OSError(errno.ENOENT, "No such file"),
                RuntimeError("mat1 and mat2 shapes cannot be multiplied"), UserInputError("unknown model 'x'")):
        assert allocation_failure(exc) == (False, None), exc
    assert JobMemoryGuard(GiB, job_id="j", task_id="t").explain(ValueError("bad input")) is None
    assert JobMemoryGuard(0, job_id="j", task_id="t").explain(MemoryError()) is None  # no ceiling, no claim


def test_the_error_names_the_ceiling_the_refused_size_and_the_setting():
    err = JobMemoryGuard(int(1.5 * GiB), job_id="j", task_id="t").explain(
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 6442450944 bytes."))
    assert isinstance(err, UserInputError) and not err.recorded
    assert str(err).startswith("the job needed more memory than its ceiling allows: an allocation of 6.00 GiB was "
                               "refused (RuntimeError); the per-job ceiling is 1.50 GiB (MODELPRESS_JOB_MEMORY_LIMIT")


def test_a_lost_child_message_says_how_close_to_the_ceiling_the_job_was(tmp_path):
    # As the worker's parent reads them: its own children's marks.
    mark_path(str(tmp_path), 4242, os.getpid()).write_text(
        '{"job_id": "j", "task_id": "t", "ceiling": 1610612736, "used": 1476395008}')
    mark_path(str(tmp_path), 4243, os.getpid()).write_text(
        '{"job_id": "j", "task_id": "t", "ceiling": 1610612736, "used": 1073741824}')
    mark = near_mark(str(tmp_path), 4242)
    assert mark is not None
    assert near_mark(str(tmp_path), 4243) is None  # 67 % of its ceiling: a lost worker, redelivered
    assert near_mark(str(tmp_path), 4244) is None  # no mark at all
    assert lost_child_reason(mark, "signal 9 (SIGKILL)").startswith(
        "the worker process running this job was lost (signal 9 (SIGKILL)) when the job used 1.38 GiB, 92% of its "
        "memory ceiling of 1.50 GiB: treated as out of memory and not retried")


def test_under_the_guard_torch_cannot_take_past_the_ceiling_and_after_it_the_limit_is_lifted():
    # In a child process: the limit is process-wide, and this test must not leave one on pytest.
    code = textwrap.dedent("""
        import resource, torch
        from modelpress.workers.memory import JobMemoryGuard
        before = resource.getrlimit(resource.RLIMIT_DATA)
        with JobMemoryGuard(512 * 1024**2, job_id="j", task_id="t") as guard:
            try:
                torch.ones(2 * 1024**3 // 4)
                print("allocated")
            except RuntimeError as e:
                print("refused:", guard.explain(e))
            small = torch.ones(64 * 1024**2 // 4)  # well under the ceiling: allowed
        print("restored:", resource.getrlimit(resource.RLIMIT_DATA) == before)
        print("after:", torch.ones(2 * 1024**3 // 4).numel() * 4)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("refused: the job needed more memory than its ceiling allows: an allocation of 2.00 GiB")
    assert lines[1:] == ["restored: True", f"after: {2 * GiB}"]


def test_a_worker_starting_removes_the_marks_of_dead_workers_on_its_host_and_keeps_the_rest(tmp_path):
    import socket

    folder = tmp_path / "memory-marks"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a pid that has exited
    stale = mark_path(str(folder), 11, int(dead))
    live = mark_path(str(folder), 12, os.getpid())
    elsewhere = folder / f"{socket.gethostname()}-b-{dead}-13.json"  # host "<ours>-b", sharing the home
    for p in (stale, live, elsewhere):
        p.write_text("{}")

    assert prepare_marks_dir(folder) == str(folder)

    assert not stale.exists() and live.exists() and elsewhere.exists()

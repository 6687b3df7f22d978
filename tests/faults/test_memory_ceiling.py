"""A job that needs more memory than its worker allows fails alone: real workers, a 1.5 GiB ceiling, 6 GiB asked.

Each test runs one ``modelpress worker`` (one child) with ``MODELPRESS_JOB_MEMORY_LIMIT=1.5GiB``, submits a job
of ``tests.faults.memory_models`` that asks for 6 GiB (touching every page) and then an ordinary job, and checks
that the big job failed with the ceiling and its variable in the error, after one claim (no redelivery), that
the ordinary job then succeeded on the same worker, that the worker is alive, and that the child never came near
6 GiB (the ceiling stopped the allocation; the host did not swap).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from tests.faults.conftest import Stack

CEILING = int(1.5 * 1024**3)
MEMORY_MODELS = "tests.faults.memory_models"
STOPPED_BY_WATCHDOG = r"resident memory .* passed its memory ceiling \(\d\.\d\d GiB when it was stopped\)"


@pytest.fixture
def mem_stack(stack: Stack) -> Stack:
    # The memory models are allow-listed here only; every process of this stack reads the same environment.
    stack.env["MODELPRESS_FACTORY_ALLOWLIST"] += f",{MEMORY_MODELS}"
    stack.env["MODELPRESS_JOB_MEMORY_LIMIT"] = "1.5GiB"
    stack.env["MP_MEM_CEILING_BYTES"] = str(CEILING)
    return stack


def submit(stack: Stack, factory: str) -> str:
    from modelpress.api import Producer
    from modelpress.optimize.recipes import Recipe

    producer = Producer(stack.settings)
    try:
        req = producer.validate(model=f"{MEMORY_MODELS}:{factory}", backend="fbgemm",
                                recipe=Recipe.from_dict({"name": f"mem-{uuid.uuid4().hex[:6]}",
                                                         "steps": [{"type": "quantize_dynamic"}]}))
        (job_id,) = producer.submit_many([req])
    finally:
        producer.close()
    stack.submitted.append(job_id)
    return job_id


def peak_resident(pid: int) -> int:
    """The child's peak resident size (VmHWM), bytes: what it really took, whatever it asked for."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def pages_swapped_out() -> int:
    with open("/proc/vmstat") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("pswpout "))


def assert_failed_on_its_ceiling(row: dict[str, Any], *, says: str) -> None:
    assert row["status"] == "failed", (row["status"], row["error"])
    assert row["attempts"] == 1, row["attempts"]  # one claim: not retried, not redelivered into a new claim
    assert "1.50 GiB" in row["error"] and "MODELPRESS_JOB_MEMORY_LIMIT" in row["error"], row["error"]
    assert re.search(says, row["error"]), row["error"]


def test_a_job_over_its_memory_ceiling_fails_alone_and_the_same_child_runs_the_next_job(mem_stack):
    swapped = pages_swapped_out()
    worker = mem_stack.workers.start("fbgemm")
    one = submit(mem_stack, "one_tensor_spec")
    many = submit(mem_stack, "many_tensors_spec")
    (after,) = mem_stack.submit("quick_spec", 1, tag="after-bombs")

    rows = mem_stack.wait_finished([one, many, after], timeout=180)

    assert_failed_on_its_ceiling(rows[one], says=r"an allocation of 6\.00 GiB was refused")
    # 1 MiB pieces: the private data the kernel's limit counts and the resident memory the watchdog samples
    # grow together, and either may pass the ceiling first (the allocator reuses pages it holds, resident but
    # already counted): 2 runs of 3 right after a full suite were stopped by the watchdog, 8 of 8 later by the
    # kernel. Both stop the job alone, with the ceiling in its error, and the child lives on (asserted below).
    assert_failed_on_its_ceiling(rows[many], says=r"an allocation of 1 MiB was refused|" + STOPPED_BY_WATCHDOG)
    assert rows[after]["status"] == "succeeded", rows[after]["error"]
    # One child ran all three: a refused allocation costs no process.
    pids = {mem_stack.child_pid(rows[j]) for j in (one, many, after)}
    assert len(pids) == 1, pids
    assert worker.poll() is None
    peak = peak_resident(pids.pop())
    print(f"child's peak resident size over both bombs and the next job: {peak / 1024**3:.2f} GiB")
    assert peak < CEILING + 0.75 * 1024**3  # never near the 6 GiB asked for
    assert pages_swapped_out() == swapped
    assert "allocated" not in " ".join(mem_stack.ledger_lines())  # neither bomb got its memory
    assert "job memory ceiling 1.50 GiB per job (MODELPRESS_JOB_MEMORY_LIMIT)" in mem_stack.workers.log("fbgemm")
    mem_stack.assert_each_job_finished_once({one: "failed", many: "failed", after: "succeeded"},
                                            fault="jobs asking 6 GiB (one tensor; 1 MiB pieces) under a 1.5 GiB "
                                                  "memory ceiling", injected=2)


def test_shared_memory_the_limit_does_not_count_is_stopped_by_the_watchdog_and_the_child_lives_on(mem_stack):
    worker = mem_stack.workers.start("fbgemm")
    shm = submit(mem_stack, "shared_memory_spec")
    (after,) = mem_stack.submit("quick_spec", 1, tag="after-shm")

    rows = mem_stack.wait_finished([shm, after], timeout=180)

    assert_failed_on_its_ceiling(rows[shm], says=STOPPED_BY_WATCHDOG)
    assert rows[after]["status"] == "succeeded", rows[after]["error"]
    assert mem_stack.child_pid(rows[shm]) == mem_stack.child_pid(rows[after])  # stopped, not killed
    assert worker.poll() is None
    peak = peak_resident(mem_stack.child_pid(rows[after]))
    print(f"child's peak resident size over the shared-memory job and the next one: {peak / 1024**3:.2f} GiB")
    assert peak < CEILING + 1024**3
    assert "allocated" not in " ".join(mem_stack.ledger_lines())
    mem_stack.assert_each_job_finished_once({shm: "failed", after: "succeeded"},
                                            fault="a job filling 6 GiB of shared memory (outside RLIMIT_DATA) under "
                                                  "a 1.5 GiB ceiling")


def test_a_job_that_ignores_the_stop_is_killed_after_its_failure_is_recorded_and_never_runs_again(mem_stack):
    worker = mem_stack.workers.start("fbgemm")
    stubborn = submit(mem_stack, "stubborn_shared_memory_spec")
    (after,) = mem_stack.submit("quick_spec", 1, tag="after-stubborn")

    rows = mem_stack.wait_finished([stubborn, after], timeout=180)

    assert_failed_on_its_ceiling(rows[stubborn], says=STOPPED_BY_WATCHDOG)
    assert rows[after]["status"] == "succeeded", rows[after]["error"]
    log = mem_stack.workers.log("fbgemm")
    assert "killing this worker process" in log and "WorkerLostError" in log  # it was killed...
    assert mem_stack.child_pid(rows[stubborn]) != mem_stack.child_pid(rows[after])  # ...and replaced
    assert worker.poll() is None
    # The redelivered message found the job finished: its model code started once, on one claim.
    assert mem_stack.executions()[stubborn] == 1
    mem_stack.assert_each_job_finished_once({stubborn: "failed", after: "succeeded"},
                                            fault="a job over its memory ceiling that ignores the stop (killed; "
                                                  "its message redelivered to no effect)")


def test_a_child_killed_near_its_memory_ceiling_fails_its_job_instead_of_redelivering_it(mem_stack):
    worker = mem_stack.workers.start("fbgemm")
    near = submit(mem_stack, "killed_near_ceiling_spec")
    (after,) = mem_stack.submit("quick_spec", 1, tag="after-oom-kill")

    rows = mem_stack.wait_finished([near, after], timeout=180)

    assert_failed_on_its_ceiling(rows[near], says=r"was lost \(signal 9 \(SIGKILL\)\) when the job used "
                                                  r"1\.\d\d GiB, 9\d% of its memory ceiling")
    assert rows[after]["status"] == "succeeded", rows[after]["error"]
    assert mem_stack.child_pid(rows[near]) != mem_stack.child_pid(rows[after])
    assert worker.poll() is None
    assert mem_stack.executions()[near] == 1
    mem_stack.assert_each_job_finished_once({near: "failed", after: "succeeded"},
                                            fault="a worker child SIGKILLed (as by the OOM killer) at 95% of its "
                                                  "job's memory ceiling")


def test_unset_the_ceiling_is_shared_out_by_the_workers_concurrency_and_a_normal_job_runs_under_it(stack):
    from modelpress.workers.memory import fmt_bytes, host_memory_bytes

    stack.workers.start("fbgemm", concurrency=2)
    (job,) = stack.submit("quick_spec", 1, tag="default-ceiling")

    rows = stack.wait_finished([job], timeout=120)

    assert rows[job]["status"] == "succeeded", rows[job]["error"]
    expected = fmt_bytes(int(0.8 * host_memory_bytes() / 2))
    log = stack.workers.log("fbgemm")
    assert (f"job memory ceiling {expected} per job (unset MODELPRESS_JOB_MEMORY_LIMIT: 80% of "
            f"{fmt_bytes(host_memory_bytes())} host memory / 2 children)") in log
    assert re.search(rf"job {job[:8]}: memory peak \d+ MiB above the worker process's start \(ceiling {expected}\)",
                     log), log[-2000:]

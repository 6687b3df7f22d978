"""A worker child or a whole worker killed with SIGKILL mid-job: the job still finishes, exactly once."""

from __future__ import annotations

import os
import signal

from tests.faults.conftest import kill_group, wait_until


def test_a_job_whose_worker_child_is_killed_mid_run_is_redelivered_and_finishes_once(stack):
    stack.workers.start("fbgemm")
    (victim,) = stack.submit("slow_spec", 1, tag="child")
    others = stack.submit("quick_spec", 2, tag="after-child")
    row = stack.wait_running(victim)
    os.kill(stack.child_pid(row), signal.SIGKILL)

    rows = stack.wait_finished([victim, *others], timeout=120)

    assert rows[victim]["attempts"] == 2  # the killed run, then the one that finished
    assert all(rows[j]["attempts"] == 1 for j in others)
    assert "WorkerLostError" in stack.all_logs()
    stack.assert_each_job_finished_once({j: "succeeded" for j in [victim, *others]},
                                        fault="kill -9 of a worker child mid-job")


def test_a_job_of_a_whole_worker_killed_mid_run_is_recovered_by_the_next_worker_without_waiting_for_redis(stack):
    first = stack.workers.start("fbgemm", name="first")
    (victim,) = stack.submit("slow_spec", 1, tag="whole")
    others = stack.submit("quick_spec", 2, tag="after-whole")
    stack.wait_running(victim)
    kill_group(first)  # parent and children at once: the message stays unacked in Redis for the visibility timeout
    stack.workers.procs.pop("first")

    stack.workers.start("fbgemm", name="second")
    rows = stack.wait_finished([victim, *others], timeout=120)

    assert rows[victim]["attempts"] == 2
    # The new worker's start-up reconciler put the job back (not Redis: its visibility timeout is > 30 min).
    assert stack.settings.visibility_timeout > 1800
    wait_until(lambda: "requeued 1 job(s) of lost workers" in stack.workers.log("second"), timeout=10,
               what="the reconciler's log line")
    stack.assert_each_job_finished_once({j: "succeeded" for j in [victim, *others]},
                                        fault="kill -9 of a whole worker mid-job, then a new worker")

"""Redelivered messages change nothing; a job that kills its process every time ends failed, the batch goes on."""

from __future__ import annotations

import re

from modelpress.reconcile import RECONCILE_TASK
from modelpress.workers.app import job_message_options, make_app
from modelpress.workers.routing import OPTIMIZE_TASK
from tests.faults.conftest import wait_until


def test_the_same_message_delivered_twice_runs_the_job_once_and_a_late_copy_does_nothing(stack):
    stack.workers.start("fbgemm", concurrency=2)  # two children: both copies are taken at the same moment
    (job,) = stack.submit("slow_spec", 1, tag="dup")
    app = make_app(stack.settings)
    try:
        app.send_task(OPTIMIZE_TASK, args=[job], **job_message_options(stack.settings, backend="fbgemm", time_limit_s=None))
        stack.wait_finished([job], timeout=90)
        # A copy arriving after the job finished (e.g. Redis restoring an unacked message): a no-op.
        app.send_task(OPTIMIZE_TASK, args=[job], **job_message_options(stack.settings, backend="fbgemm", time_limit_s=None))
        wait_until(lambda: "'already-finished'" in stack.workers.log("fbgemm"), timeout=60,
                   what="the late copy to be dropped")
    finally:
        app.close()

    rows = stack.assert_each_job_finished_once({job: "succeeded"}, injected=2,
                                               fault="the same message delivered twice, and again after it finished")
    assert rows[job]["attempts"] == 1
    assert stack.executions()[job] == 1
    log = stack.workers.log("fbgemm")
    # The copy that found the job running elsewhere looked again later (a retry on the same queue),
    # instead of being dropped. Either copy may be the one that waits: the producer's message shows
    # its shadow name ("<model>:<recipe> <tag> <backend>"), the test's copy shows modelpress.optimize.
    assert re.search(r"Task [^\[\n]+\[[^\]]+\] retry: Retry in", log), log[-3000:]
    assert "reject requeue=False" not in log


def test_a_job_that_kills_its_process_every_time_fails_after_its_attempts_and_the_batch_goes_on(stack):
    stack.workers.start("fbgemm")
    (poison,) = stack.submit("crash_spec", 1, tag="poison")
    good = stack.submit("quick_spec", 2, tag="after-poison")

    rows = stack.wait_finished([poison, *good], timeout=150)

    assert rows[poison]["status"] == "failed"
    assert rows[poison]["attempts"] == stack.settings.max_attempts == 3
    assert re.search(r"gave up after 3 attempts", rows[poison]["error"]), rows[poison]["error"]
    stack.assert_each_job_finished_once({poison: "failed", **{j: "succeeded" for j in good}}, injected=3,
                                        fault="a poison job that SIGKILLs its own process on every attempt")


def test_the_reconcile_task_sent_by_name_as_beat_does_runs_on_the_ops_worker(stack):
    stack.start_ops_worker()
    app = make_app(stack.settings)
    try:
        app.send_task(RECONCILE_TASK)
    finally:
        app.close()
    wait_until(lambda: re.search(r"Task modelpress\.reconcile\[[^\]]+\] succeeded .*'requeued_stale': \[\]",
                                 stack.workers.log("ops")), timeout=30, what="modelpress.reconcile to run")


def test_a_live_worker_whose_job_was_taken_over_abandons_its_run_and_the_job_is_recorded_once(stack):
    from modelpress.reconcile import reconcile_once

    stack.workers.start("fbgemm")
    (job,) = stack.submit("slow_spec", 1, tag="takeover")
    stack.wait_running(job)
    # As after a database outage longer than the stale period: the reconciler sees an old heartbeat
    # although the worker is alive, requeues the job and publishes it again.
    impatient = stack.settings.model_copy(update={"heartbeat_stale_after": 0.001})
    assert reconcile_once(impatient).requeued_stale == [job]

    rows = stack.wait_finished([job], timeout=90)

    log = stack.workers.log("fbgemm")
    assert f"job {job}: this worker no longer holds the job" in log
    assert "'abandoned'" in log  # the first run stopped instead of finishing
    assert rows[job]["attempts"] == 2
    stack.assert_each_job_finished_once({job: "succeeded"},
                                        fault="a job taken over from a live worker whose heartbeat looked stale")


def test_a_job_taken_over_inside_code_that_wraps_every_error_is_abandoned_and_never_failed_as_bad_input(stack):
    from modelpress.reconcile import reconcile_once

    stack.workers.start("fbgemm")
    # Static int8 traces the model with FX; the tracer's "not traceable" handler wraps every exception as
    # bad input. The takeover's abandon signal lands inside it.
    (job,) = stack.submit("slow_to_trace_spec", 1, tag="wrapped", recipe={"steps": [{"type": "quantize_static"}]})
    wait_until(lambda: any(line.startswith(job) and " trace " in line for line in stack.ledger_lines()),
               timeout=90, what="the first run to be inside the FX trace")
    impatient = stack.settings.model_copy(update={"heartbeat_stale_after": 0.001})
    assert reconcile_once(impatient).requeued_stale == [job]

    rows = stack.wait_finished([job], timeout=120)
    log = stack.workers.log("fbgemm")
    assert f"job {job}: this worker no longer holds the job" in log
    assert f"job {job}: abandoned; nothing recorded by this run" in log
    assert "FX-traceable" not in log  # the abandon signal was never re-labelled as an untraceable model
    assert (rows[job]["status"], rows[job]["attempts"], rows[job]["error"]) == ("succeeded", 2, None)
    stack.assert_each_job_finished_once({job: "succeeded"},
                                        fault="a job taken over while its code wraps every exception as bad input")

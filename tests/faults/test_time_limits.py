"""A job's own time limit (recipe ``time_limit_s``) is applied per message: soft stops it, hard kills it."""

from __future__ import annotations

from tests.faults.conftest import wait_until


def test_a_job_over_its_soft_limit_fails_with_the_limit_named_and_one_over_its_hard_limit_is_killed_and_failed(stack):
    stack.workers.start("fbgemm")
    limit = {"time_limit_s": 2}  # soft 2 s; hard 2 + MODELPRESS_JOB_HARD_LIMIT_GRACE (3) = 5 s
    (soft,) = stack.submit("sleepy_spec", 1, tag="soft", recipe=limit)
    (hard,) = stack.submit("stubborn_spec", 1, tag="hard", recipe=limit)
    after = stack.submit("quick_spec", 1, tag="after-limits")  # no limit of its own: the deployment's applies

    rows = stack.wait_finished([soft, hard, *after], timeout=120)

    assert rows[soft]["time_limit_s"] == 2 and rows[hard]["time_limit_s"] == 2
    assert rows[soft]["status"] == "failed"
    assert "exceeded its soft time limit of 2 s" in rows[soft]["error"]
    assert rows[hard]["status"] == "failed"
    assert "exceeded its hard time limit of 5 s and its process was killed" in rows[hard]["error"]
    # The stubborn job really did ignore the soft limit, and only the hard one stopped it.
    assert any(line.startswith(f"{hard} ") and "soft-limit-ignored" in line for line in stack.ledger_lines())
    for job in (soft, hard):  # killed by its limit once, never retried
        assert rows[job]["attempts"] == 1
    log = stack.workers.log("fbgemm")
    assert "Hard time limit (5.0s) exceeded" in log or "Hard time limit (5s) exceeded" in log
    stack.assert_each_job_finished_once({soft: "failed", hard: "failed", **{j: "succeeded" for j in after}},
                                        injected=2, fault="jobs over their own soft and hard time limits")
    # Nothing comes back later: a reconciler pass well after the stale period finds nothing to requeue.
    from modelpress.reconcile import reconcile_once

    wait_until(lambda: True, timeout=1)
    assert reconcile_once(stack.settings).total == 0

"""Redis or PostgreSQL restarted mid-batch (private servers: the shared ones are never touched)."""

from __future__ import annotations

import re

from tests.faults.conftest import PostgresCluster, RedisServer, wait_until


def test_a_batch_survives_a_redis_restart_that_loses_every_queued_message(make_stack, tmp_path):
    with RedisServer(tmp_path / "redis") as redis:
        stack = make_stack(broker=redis.url)
        stack.workers.start("fbgemm")
        stack.start_ops_worker()
        first, *rest = stack.submit("slow_spec", 4, tag="redis")
        stack.wait_running(first)

        redis.restart()  # kill -9, nothing on disk: the three queued messages are gone
        with stack.beat(every=2):
            rows = stack.wait_finished([first, *rest], timeout=150)

        log = stack.workers.log("fbgemm")
        assert "Connection to broker lost" in log, log[-2000:]
        assert re.search(r"re-published [1-9]", stack.all_logs())
        stack.assert_each_job_finished_once({j: "succeeded" for j in [first, *rest]},
                                            fault="Redis restarted mid-batch, nothing persisted")
        assert all(r["attempts"] <= 2 for r in rows.values())


def test_a_batch_survives_postgresql_going_down_while_a_job_finishes_and_the_next_is_claimed(make_stack):
    with PostgresCluster() as pg:
        stack = make_stack(pg_admin=pg.admin_url)
        stack.workers.start("fbgemm")
        stack.start_ops_worker()
        first, *rest = stack.submit("slow_spec", 3, tag="pg")
        stack.wait_running(first)

        pg.stop("immediate")  # every connection dropped
        try:
            log = lambda: stack.workers.log("fbgemm")  # noqa: E731
            # The running job finishes while the database is gone: its result is kept in memory and the write
            # is retried with backoff (issue 10 item 4), never thrown away and recomputed; the next message
            # cannot even be looked up, and is retried too (not dropped).
            wait_until(lambda: f"job {first}: recording the result failed" in log(), timeout=90,
                       what="the first job's result write to meet the outage")
        finally:
            pg.start()
        with stack.beat(every=2):
            rows = stack.wait_finished([first, *rest], timeout=180)

        stack.assert_each_job_finished_once({j: "succeeded" for j in [first, *rest]},
                                            fault="PostgreSQL down while a job finishes and the next is claimed")
        # The first job's result, computed during the outage, was recorded once the database was back:
        # one claim, one run (before the fix it was requeued and computed again under a second claim).
        assert rows[first]["attempts"] == 1
        assert f"job {first}: recorded succeeded" in stack.workers.log("fbgemm")
        assert all(rows[j]["attempts"] == 1 for j in rest)

"""The database goes away at the end of a job: the computed result is kept and written once it is back.

The worker reaches PostgreSQL through a small TCP proxy started by the test (the shared server is never
restarted). The proxy is "paused" while the job runs — every open connection is cut and new ones are
refused — so the job's final write fails; it is retried with backoff and lands when the proxy resumes.
"""

from __future__ import annotations

import socket
import threading

from sqlalchemy.engine import make_url

from tests.faults.conftest import wait_until


class PausableProxy:
    """A TCP proxy to ``upstream``; ``pause()`` cuts every connection and refuses new ones until ``resume()``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.paused = threading.Event()
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.paused.is_set():
                self.refused += 1
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def pause(self) -> None:
        self.paused.set()
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def resume(self) -> None:
        self.paused.clear()

    def close(self) -> None:
        self.closed.set()
        self.pause()
        self.listener.close()


def test_a_database_outage_at_the_end_of_a_job_keeps_its_first_result_and_records_it_once_back(stack):
    url = make_url(stack.env["MODELPRESS_DATABASE_URL"])
    proxy = PausableProxy((url.host or "127.0.0.1", url.port or 5432))
    try:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        stack.workers.start("fbgemm", extra_env={
            "MODELPRESS_DATABASE_URL": proxied,
            # No takeover during the outage: this test is about the write, not about lost workers.
            "MODELPRESS_HEARTBEAT_STALE_AFTER": "120",
            "MODELPRESS_RESULT_WRITE_BACKOFF": "0.5",
            "MP_FAULT_SLOW_S": "3",
        })
        [job] = stack.submit("slow_spec", 1, tag="outage")
        stack.wait_running(job)
        proxy.pause()  # from now until after the result is computed: no database for the worker
        wait_until(lambda: stack.workers.log("fbgemm").count("recording the result failed") >= 2, timeout=90,
                   what="the worker to try its final write twice while the database is away")
        assert stack.executions()[job] == 1
        proxy.resume()
        rows = stack.wait_finished([job], timeout=90)
        assert proxy.refused >= 2  # the outage was real: connections were refused
        row = rows[job]
        assert (row["status"], row["attempts"]) == ("succeeded", 1), row["error"]
        stack.assert_each_job_finished_once({job: "succeeded"}, fault="database unreachable while a job finishes")
    finally:
        proxy.close()

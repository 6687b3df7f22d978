"""Secrets stay out of logs and output; Flower is never served without credentials off loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from sqlalchemy.engine import make_url

from tests.faults.conftest import RedisServer, free_port, kill_group, wait_until

BROKER_PASSWORD = "brokerPW-5f1e9c"
DB_PASSWORD = "dbPW-0a7d33"


def test_neither_the_broker_nor_the_database_password_appears_in_worker_logs_or_command_output(make_stack, tmp_path):
    with RedisServer(tmp_path / "redis", password=BROKER_PASSWORD) as redis:
        stack = make_stack(broker=redis.url)
        # The tests' role logs in with its password (tools/test-services): the real one must never be printed.
        # A server given by MODELPRESS_TEST_PG_URL without one trusts the login: carry one all the same.
        db = make_url(stack.env["MODELPRESS_DATABASE_URL"])
        db = db if db.password else db.set(password=DB_PASSWORD)
        db_password = str(db.password)
        stack.env["MODELPRESS_DATABASE_URL"] = db.render_as_string(hide_password=False)
        stack.workers.env = stack.env
        stack.workers.start("fbgemm")
        stack.start_ops_worker()
        (job,) = stack.submit("quick_spec", 1, tag="secret")
        stack.wait_finished([job], timeout=90)  # the passwords work: Redis refuses clients without one
        redis.restart()  # reconnect attempts print the broker URL again, in warnings
        wait_until(lambda: "Connected to redis" in stack.workers.log("fbgemm").split("Connection to broker lost")[-1],
                   timeout=60, what="the worker to reconnect")
        outputs = [subprocess.run([sys.executable, "-m", "modelpress", *args], env=stack.env, capture_output=True,
                                  text=True, timeout=120) for args in (["reconcile"], ["jobs"], ["show", job])]

    log = stack.all_logs()
    assert f"redis://:**@127.0.0.1:{redis.port}/0" in log  # Celery's banner, masked
    assert "Connection to broker lost" in log
    for text in [log, *(o.stdout + o.stderr for o in outputs)]:
        assert BROKER_PASSWORD not in text
        assert db_password not in text
    assert all(o.returncode == 0 for o in outputs), [o.stderr[-500:] for o in outputs]
    redacted = str(stack.settings.redacted())
    assert BROKER_PASSWORD not in redacted and db_password not in redacted


def _outside_address() -> str:
    # The address other machines would use; Flower bound to 0.0.0.0 answers on it.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        return s.getsockname()[0]


def test_flower_refuses_to_serve_off_loopback_without_credentials_and_asks_for_them_when_it_does(stack):
    flower = [sys.executable, "-m", "modelpress", "flower"]
    for extra in (["--address", "0.0.0.0"], ["--address", "0.0.0.0", "--insecure-localhost"]):
        out = subprocess.run([*flower, *extra], env=stack.env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and "error:" in out.stderr, (extra, out.returncode, out.stderr[-500:])

    port = free_port()
    env = {**stack.env, "MODELPRESS_FLOWER_BASIC_AUTH": "admin:flowerPW-91b2"}
    log = open(stack.home / "flower.log", "ab")
    proc = subprocess.Popen([*flower, "--address", "0.0.0.0", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://{_outside_address()}:{port}/api/workers"

        def status() -> int | None:
            try:
                return urllib.request.urlopen(url, timeout=2).status
            except urllib.error.HTTPError as e:
                return e.code
            except OSError:
                return None

        code = wait_until(status, timeout=60, what="Flower to listen")
        assert code == 401  # not served without the password, from another machine's point of view
        time.sleep(0.2)
    finally:
        kill_group(proc)
    assert "flowerPW-91b2" not in (stack.home / "flower.log").read_text(errors="replace")

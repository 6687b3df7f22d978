"""Flower: never unprotected by accident, and it shows our tasks with their job ids to a real browser."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from modelpress.api import Producer
from modelpress.cli import wait_for
from modelpress.settings import Settings
from modelpress.workers.flower import FlowerConfigError, flower_command
from tests.conftest import ROOT, settings_from_env
from tests.workers.processes import Processes

DOCS_SCREENSHOT = ROOT / "docs" / "img" / "flower-tasks.png"


@pytest.mark.parametrize(("auth", "args", "message"), [
    (None, [], "Flower needs credentials"),
    (None, ["--insecure-localhost", "--address", "0.0.0.0"], "binds only to 127.0.0.1"),
    ("admin", [], "must be user:password"),
    ("admin:", [], "must be user:password"),
])
def test_flower_refuses_to_start_unprotected_or_with_malformed_credentials(tmp_path, auth, args, message):
    env = {"PATH": os.environ["PATH"], "MODELPRESS_HOME": str(tmp_path)}
    if auth is not None:
        env["MODELPRESS_FLOWER_BASIC_AUTH"] = auth
    out = subprocess.run([sys.executable, "-m", "modelpress", "flower", *args], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert message in out.stderr
    if auth:
        assert auth not in out.stderr.replace("user:password", "")


def test_flower_runs_without_credentials_only_on_localhost_and_only_when_asked(tmp_path):
    argv, env = flower_command(Settings(home=tmp_path), address="127.0.0.1", port=5555, insecure_localhost=True)
    assert env == {} and "--address=127.0.0.1" in argv
    argv, env = flower_command(Settings(home=tmp_path, flower_basic_auth="a:b,c:d"), address="0.0.0.0", port=1)
    assert env == {"FLOWER_BASIC_AUTH": "a:b,c:d"}
    assert not any("a:b" in a for a in argv)  # the secret is never on the command line (ps shows it)
    with pytest.raises(FlowerConfigError):
        flower_command(Settings(home=tmp_path), address="127.0.0.1", port=5555)


def test_every_event_of_a_job_names_it_by_its_display_name_even_task_sent(queue):
    # Celery's task-sent carries the real task name; arriving after task-received (a loaded host), it
    # renamed the job in Flower to "modelpress.optimize". Listen on real Redis, with no worker, to the
    # event the producer sends.
    import threading
    import time

    from modelpress.workers.app import make_app

    env, _ = queue
    settings = settings_from_env(env)
    app = make_app(settings)
    events: list[dict] = []
    with app.connection_for_read() as conn, app.connection_for_write() as out:
        recv = app.events.Receiver(conn, handlers={"*": events.append})
        thread = threading.Thread(target=recv.capture, kwargs={"wakeup": False}, daemon=True)
        thread.start()
        # Redis pub/sub keeps nothing for late subscribers: probe until the receiver hears us.
        with app.events.Dispatcher(out) as probe:
            deadline = time.monotonic() + 30
            while not any(e["type"] == "modelpress-probe" for e in events) and time.monotonic() < deadline:
                probe.send("modelpress-probe")
                time.sleep(0.1)
        producer = Producer(settings)
        job_id = producer.submit(model="mlp", recipe="dynamic-int8", backend="fbgemm")
        producer.close()
        deadline = time.monotonic() + 30
        while not any(e["type"] == "task-sent" for e in events) and time.monotonic() < deadline:
            time.sleep(0.1)
        recv.should_stop = True
        thread.join(10)
    sent = [(e["name"], e["args"]) for e in events if e["type"] == "task-sent"]
    assert sent == [("mlp dynamic-int8 fbgemm", f"['{job_id}']")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, auth: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def _chromium(url: str, *flags: str, window: str = "1280,900") -> subprocess.CompletedProcess[str]:
    """Headless Chromium with the flags from the field notes and a fresh profile, bounded in time."""
    profile = tempfile.mkdtemp(prefix="mp-chromium-")
    try:
        return subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={profile}", "--virtual-time-budget=5000", f"--window-size={window}", *flags, url],
            capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_flower_behind_basic_auth_shows_our_tasks_with_their_job_ids_in_headless_chromium(queue, tmp_path):
    env, workers = queue
    password = "pw-" + os.urandom(6).hex()
    auth = f"admin:{password}"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    procs = Processes(env, tmp_path)
    try:
        workers.start("fbgemm")
        flower = procs.start("flower", "flower", "--port", str(port),
                             extra_env={"MODELPRESS_FLOWER_BASIC_AUTH": auth})
        procs.wait_for("Flower to answer", lambda: _get(f"{base}/healthcheck")[0] == 200, timeout=90)

        # Locked without the right credentials; /metrics stays open (so it binds to 127.0.0.1 by default).
        for path in ("/", "/tasks", "/api/tasks"):
            assert _get(base + path)[0] == 401, path
            assert _get(base + path, "admin:wrong")[0] == 401, path
        assert _get(f"{base}/metrics")[0] == 200

        settings = settings_from_env(env)
        producer = Producer(settings)
        job_ids = [producer.submit(model="mlp", recipe="dynamic-int8", backend="fbgemm") for _ in range(2)]
        producer.close()
        rows = wait_for(settings, job_ids, timeout=240, quiet=True)
        assert all(r["status"] in ("succeeded", "rejected") for r in rows), [r["error"] for r in rows]

        def flower_has_both() -> bool:
            status, body = _get(f"{base}/api/tasks", auth)
            tasks = json.loads(body) if status == 200 else {}
            # The display name (Celery's shadow) says what each job is: model, recipe, backend.
            done = [t for t in tasks.values() if t.get("name") == "mlp dynamic-int8 fbgemm" and t.get("state") == "SUCCESS"]
            return all(any(j in (t.get("args") or "") for t in done) for j in job_ids)

        try:
            procs.wait_for("Flower to list both finished jobs", flower_has_both, timeout=90)
        except AssertionError as e:
            raise AssertionError(f"{e}\n/api/tasks: {_get(f'{base}/api/tasks', auth)[1][:3000]!r}\n"
                                 f"/metrics: {[l for l in _get(f'{base}/metrics')[1].decode().splitlines() if 'flower_events_total' in l]}\n"
                                 f"jobs: {job_ids}") from None

        user_url = f"http://{auth}@127.0.0.1:{port}/tasks"
        dom = _chromium(user_url, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert "mlp dynamic-int8 fbgemm" in dom.stdout
        for job_id in job_ids:
            assert job_id in dom.stdout  # the args column: [job_id]
        assert "SUCCESS" in dom.stdout

        shot = tmp_path / "flower-tasks.png"
        out = _chromium(user_url, f"--screenshot={shot}", window="1700,560")
        assert out.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", out.stderr[-2000:]
        assert shot.stat().st_size > 20_000  # a rendered table, not a blank page
        if os.environ.get("MODELPRESS_REFRESH_DOCS_SCREENSHOT"):
            DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, DOCS_SCREENSHOT)

        # The password is in no log line and not on Flower's command line.
        assert password not in procs.log("flower")
        assert password.encode() not in Path(f"/proc/{flower.pid}/cmdline").read_bytes()
    finally:
        procs.stop_all()

"""Workers, beat and Flower refuse to start with an example password unless a demo flag says so (issue 20 item 8).

`.env.example`'s passwords are printed in the repository: a deployment still using them has no secret at
all. The refusal is exit 2 with one line naming the variable (never its value), before anything starts.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml

from tests.conftest import ROOT

EXAMPLE = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
               if line and not line.startswith("#"))
EXAMPLE_DB_URL = f"postgresql+psycopg://modelpress:{EXAMPLE['POSTGRES_PASSWORD']}@127.0.0.1:1/modelpress"


def _env(home, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPRESS_")}
    env.update({"MODELPRESS_HOME": str(home), "MODELPRESS_NIGHTLY_SCHEDULE": "", **extra})
    return env


def _run(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "modelpress", *args], env=env, capture_output=True, text=True,
                         timeout=120)
    return out, time.monotonic() - t0


@pytest.mark.parametrize(("command", "variable", "extra"), [
    (["worker", "--backend", "fbgemm"], "MODELPRESS_DATABASE_URL", {"MODELPRESS_DATABASE_URL": EXAMPLE_DB_URL}),
    (["ops-worker"], "MODELPRESS_DATABASE_URL", {"MODELPRESS_DATABASE_URL": EXAMPLE_DB_URL}),
    (["beat"], "MODELPRESS_BROKER_URL", {"MODELPRESS_BROKER_URL": "redis://:secret@127.0.0.1:1/0"}),
    (["flower"], "MODELPRESS_FLOWER_BASIC_AUTH",
     {"MODELPRESS_FLOWER_BASIC_AUTH": EXAMPLE["MODELPRESS_FLOWER_BASIC_AUTH"]}),
])
def test_each_service_started_with_an_example_password_exits_2_at_once_with_one_line_naming_the_variable(
        tmp_path, command, variable, extra):
    out, took = _run(_env(tmp_path, **extra), *command)
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"error: `modelpress {command[0]}` refuses to start: {variable} holds an example password")
    assert "--allow-example-passwords" in line
    for secret in (EXAMPLE["POSTGRES_PASSWORD"], EXAMPLE["MODELPRESS_FLOWER_BASIC_AUTH"], ":secret@"):
        assert secret not in out.stderr + out.stdout  # named, never printed
    assert took < 30, took  # refused before any broker, database or torch is touched
    assert not (tmp_path / "modelpress.db").exists()


@pytest.mark.parametrize("allow", [["--allow-example-passwords"], []])
def test_the_demo_flag_or_variable_lets_a_worker_past_the_password_check(tmp_path, allow):
    # With the flag, the next check speaks: no broker URL, so the embedded-default refusal (also exit 2).
    extra = {"MODELPRESS_DATABASE_URL": EXAMPLE_DB_URL} | ({} if allow else {"MODELPRESS_ALLOW_EXAMPLE_PASSWORDS": "1"})
    out, _ = _run(_env(tmp_path, **extra), "worker", *allow)
    assert out.returncode == 2
    assert "refuses to start" not in out.stderr
    assert "warning: MODELPRESS_DATABASE_URL holds a placeholder password" in out.stderr
    assert "MODELPRESS_BROKER_URL is not set" in out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_flower_with_the_demo_flag_serves_behind_the_example_password(tmp_path, redis_url):
    port = _free_port()
    env = _env(tmp_path, MODELPRESS_BROKER_URL=redis_url,
               MODELPRESS_FLOWER_BASIC_AUTH=EXAMPLE["MODELPRESS_FLOWER_BASIC_AUTH"])
    log = open(tmp_path / "flower.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "modelpress", "flower", "--port", str(port),
                             "--allow-example-passwords"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline, status = time.monotonic() + 90, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status
            except urllib.error.HTTPError as e:
                status = e.code
                break
            except OSError:
                time.sleep(0.3)
        assert status == 401, (tmp_path / "flower.log").read_text(errors="replace")[-2000:]  # up, and locked
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
    text = (tmp_path / "flower.log").read_text(errors="replace")
    assert "MODELPRESS_FLOWER_BASIC_AUTH holds a placeholder password (pair 1)" in text
    assert EXAMPLE["MODELPRESS_FLOWER_BASIC_AUTH"] not in text


def test_docker_compose_with_the_example_env_file_starts_services_that_refuse_their_passwords(tmp_path):
    for name in ("docker-compose.yml", "Dockerfile", ".dockerignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    config = subprocess.run(["docker-compose", "-f", "docker-compose.yml", "config"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert config.returncode == 0, config.stderr
    services = yaml.safe_load(config.stdout)["services"]
    for name, variable in (("worker-fbgemm", "MODELPRESS_DATABASE_URL"), ("beat", "MODELPRESS_DATABASE_URL"),
                           ("flower", "MODELPRESS_FLOWER_BASIC_AUTH")):
        svc = services[name]
        assert svc["environment"]["MODELPRESS_ALLOW_EXAMPLE_PASSWORDS"] == "0"
        # The service's own command and environment (its home moved to a folder this test may write).
        env = _env(tmp_path / name, **{**svc["environment"], "MODELPRESS_HOME": str(tmp_path / name)})
        out, _ = _run(env, *svc["command"][1:])
        assert out.returncode == 2, (name, out.stderr[-2000:])
        assert f"refuses to start: {variable}" in out.stderr, (name, out.stderr)

    # A throwaway demo says so in .env, and every service gets the flag.
    with open(tmp_path / ".env", "a") as f:
        f.write("MODELPRESS_ALLOW_EXAMPLE_PASSWORDS=1\n")
    demo = subprocess.run(["docker-compose", "-f", "docker-compose.yml", "config"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    services = yaml.safe_load(demo.stdout)["services"]
    assert {services[n]["environment"]["MODELPRESS_ALLOW_EXAMPLE_PASSWORDS"]
            for n in ("worker-fbgemm", "worker-qnnpack", "ops-worker", "beat", "flower")} == {"1"}

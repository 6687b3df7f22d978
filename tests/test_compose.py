"""The deployment files: docker-compose validates the compose file, and every command in it is tested."""

from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
import sys

import yaml

from modelpress.cli import build_parser
from tests.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"

# Each `modelpress ...` command the compose file runs → the test that runs that command for real.
TESTED_COMMANDS = {
    ("db", "upgrade"): "tests/test_compose.py::test_the_migration_command_brings_an_empty_database_to_head",
    ("worker",): "tests/workers/test_routing.py::test_each_job_runs_on_a_worker_of_its_target_backend_with_that_engine",
    ("ops-worker",): "tests/workers/test_beat.py::test_two_beats_started_together_enqueue_one_nights_jobs_once_and_a_standby_takes_over",
    ("beat",): "tests/workers/test_beat.py::test_two_beats_started_together_enqueue_one_nights_jobs_once_and_a_standby_takes_over",
    ("flower",): "tests/workers/test_flower.py::test_flower_behind_basic_auth_shows_our_tasks_with_their_job_ids_in_headless_chromium",
}


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _commands() -> dict[str, list[str]]:
    out = {}
    for name, svc in _compose()["services"].items():
        cmd = svc.get("command")
        if cmd is not None and svc.get("build"):
            out[name] = shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]
    return out


def test_docker_compose_accepts_the_compose_file_with_an_env_file_made_from_the_example(tmp_path):
    for name in ("docker-compose.yml", "Dockerfile", ".dockerignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    run = ["docker-compose", "-f", "docker-compose.yml", "config", "-q"]
    ok = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    # Without the env file it refuses: the secrets have no defaults.
    (tmp_path / ".env").unlink()
    refused = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "POSTGRES_PASSWORD" in refused.stderr


def test_every_compose_command_parses_and_is_run_by_a_named_test():
    commands = _commands()
    assert set(commands) == {"migrate", "worker-fbgemm", "worker-qnnpack", "ops-worker", "beat", "flower"}
    parser = build_parser()
    for service, argv in commands.items():
        assert argv[0] == "modelpress", service
        parser.parse_args(argv[1:])  # exits (fails the test) on an unknown subcommand or bad option
        key = next((k for k in TESTED_COMMANDS if tuple(argv[1:1 + len(k)]) == k), None)
        assert key is not None, f"{service}: `{' '.join(argv)}` is run by no test; add one to TESTED_COMMANDS"
        path, func = TESTED_COMMANDS[key].split("::")
        tree = ast.parse((ROOT / path).read_text())
        assert func in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, TESTED_COMMANDS[key]


def test_the_services_start_in_order_with_persistent_redis_and_the_right_platforms():
    services = _compose()["services"]
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert services["redis"]["healthcheck"] and services["postgres"]["healthcheck"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"
    for name in ("worker-fbgemm", "worker-qnnpack", "ops-worker", "beat"):
        assert services[name]["depends_on"] == {"redis": {"condition": "service_healthy"},
                                                "migrate": {"condition": "service_completed_successfully"}}
    assert services["worker-fbgemm"]["platform"] == "linux/amd64"
    assert services["worker-qnnpack"]["platform"] == "linux/arm64"
    # Flower's /metrics is open even with basic auth: published on the host's loopback only.
    assert all(p.startswith("127.0.0.1:") for p in services["flower"]["ports"])
    assert "MODELPRESS_DATABASE_URL" not in services["flower"]["environment"]


def test_secrets_come_only_from_the_uncommitted_env_file():
    text = COMPOSE.read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert required == {"POSTGRES_PASSWORD", "MODELPRESS_FLOWER_BASIC_AUTH"}
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert required <= set(example)
    assert all("change-me" in example[k] for k in required)
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, timeout=30)
    assert ignored.returncode == 0, ".env must be ignored by git"
    assert ".env" in (ROOT / ".dockerignore").read_text().splitlines()


def test_the_image_is_python_3_11_slim_with_the_pinned_cpu_torch():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert '"torch==2.13.0"' in dockerfile
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in dockerfile
    assert "MODELPRESS_MIGRATIONS_DIR=/app/migrations" in dockerfile and "COPY migrations" in dockerfile


def test_the_migration_command_brings_an_empty_database_to_head(db_url, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "MODELPRESS_HOME": str(tmp_path), "MODELPRESS_DATABASE_URL": db_url}
    out = subprocess.run([sys.executable, "-m", "modelpress", "db", "upgrade"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    from modelpress.models_db.migrate import current

    head = current(db_url)
    assert head is not None and f"database at revision {head}" in out.stdout
    again = subprocess.run([sys.executable, "-m", "modelpress", "db", "upgrade"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and f"database at revision {head}" in again.stdout  # idempotent re-run

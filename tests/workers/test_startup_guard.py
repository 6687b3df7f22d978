"""Long-running processes refuse the embedded default and example secrets unless asked."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from modelpress.cli import refuse_or_warn
from modelpress.settings import Settings


def _env(home, **extra):  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPRESS_")}
    env.update({"MODELPRESS_HOME": str(home), "MODELPRESS_NIGHTLY_SCHEDULE": "", **extra})
    return env


@pytest.mark.parametrize("command", ["worker", "beat", "ops-worker"])
def test_a_worker_beat_or_ops_worker_without_broker_and_database_urls_refuses_to_start_and_says_what_to_set(
        tmp_path, command):
    out = subprocess.run([sys.executable, "-m", "modelpress", command], env=_env(tmp_path), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "MODELPRESS_BROKER_URL and MODELPRESS_DATABASE_URL are not set" in out.stderr
    assert "--embedded" in out.stderr
    assert not (tmp_path / "modelpress.db").exists()  # refused before touching anything

    # Only one of the two set: still the embedded default for the other, still refused.
    half = subprocess.run([sys.executable, "-m", "modelpress", command],
                          env=_env(tmp_path, MODELPRESS_BROKER_URL="redis://127.0.0.1:6379/0"),
                          capture_output=True, text=True, timeout=120)
    assert half.returncode == 2 and "MODELPRESS_DATABASE_URL is not set" in half.stderr


def test_embedded_is_allowed_when_asked_and_example_secrets_are_refused_unless_a_demo_flag_allows_them(
        tmp_path, capsys):
    assert refuse_or_warn(Settings(home=tmp_path), "worker", embedded=True) is None
    assert refuse_or_warn(Settings(home=tmp_path), "worker", embedded=False) == 2
    capsys.readouterr()

    deployed = Settings(home=tmp_path, broker_url="redis://:secret@redis:6379/0",
                        database_url="postgresql+psycopg://modelpress:change-me-postgres@db/modelpress",
                        flower_basic_auth="admin:admin")
    assert refuse_or_warn(deployed, "beat", embedded=False) == 2  # refused (issue 20 item 8), in one line
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: `modelpress beat` refuses to start: MODELPRESS_FLOWER_BASIC_AUTH, "
                           "MODELPRESS_DATABASE_URL and MODELPRESS_BROKER_URL hold example passwords"), line
    assert "--allow-example-passwords" in line
    assert "admin" not in line and "change-me-postgres" not in line and "secret@" not in line  # named, never printed

    # The demo flag lets it start, still warning about each one.
    assert refuse_or_warn(deployed, "beat", embedded=False, allow_example_passwords=True) is None
    err = capsys.readouterr().err
    assert "MODELPRESS_FLOWER_BASIC_AUTH holds a placeholder password (pair 1)" in err
    assert "admin" not in err  # not even a weak credential is echoed
    assert "MODELPRESS_DATABASE_URL holds a placeholder password" in err
    assert "MODELPRESS_BROKER_URL holds a placeholder password" in err
    assert "change-me-postgres" not in err
    demo = Settings(home=tmp_path, broker_url=deployed.broker_url, database_url=deployed.database_url,
                    allow_example_passwords=True)
    assert refuse_or_warn(demo, "worker", embedded=False) is None  # MODELPRESS_ALLOW_EXAMPLE_PASSWORDS=1

    good = Settings(home=tmp_path, broker_url="redis://:Zq8-long-random@redis:6379/0",
                    database_url="postgresql+psycopg://modelpress:Xu2v9-random@db/modelpress",
                    flower_basic_auth="ops:W7-not-an-example")
    assert good.placeholder_secrets() == [] and good.example_password_refusal("worker") is None

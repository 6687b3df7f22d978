"""The README's test command does its own set-up (issue 10, item 1): a fresh machine passes it.

`make test` runs `tools/test-services` before pytest; `.ci/run` is exactly `make test`. These tests run the
real script: against a PATH without chromium/docker-compose it plans their install, and against a Redis port
nothing listens on it starts a real Redis there.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "tools" / "test-services"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _path_without(tmp_path: Path, hidden: set[str]) -> str:
    """A PATH holding every command of the real PATH except ``hidden`` (symlinks in one folder)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            target = Path(folder) / name
            if name in hidden or (bin_dir / name).exists() or not os.access(target, os.X_OK):
                continue
            (bin_dir / name).symlink_to(target)
    return str(bin_dir)


def test_the_readme_test_command_and_ci_run_the_same_set_up() -> None:
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^make test\b", readme, re.M), "the README's second command is `make test`"
    makefile = (ROOT / "Makefile").read_text()
    test_recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "tools/test-services" in test_recipe and "pytest" in test_recipe
    assert test_recipe.index("tools/test-services") < test_recipe.index("pytest")
    ci_lines = [ln for ln in (ROOT / ".ci/run").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert ci_lines[-1].strip() == "exec make test"


def test_missing_chromium_and_docker_compose_are_installed_before_the_suite(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": _path_without(tmp_path, {"chromium", "docker-compose"})}
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    plan = [ln for ln in out.stdout.splitlines() if "apt-get install" in ln]
    assert plan and "chromium" in plan[0] and "docker-compose" in plan[0], out.stdout


def test_nothing_is_installed_when_everything_is_there() -> None:
    assert shutil.which("chromium") and shutil.which("docker-compose"), "run tools/test-services first"
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "apt-get" not in out.stdout, out.stdout


def test_a_redis_that_is_not_running_is_started(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "MODELPRESS_TEST_REDIS_PORT": str(port)}
    try:
        out = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"starting redis on 127.0.0.1:{port}" in out.stdout
        import redis

        assert redis.Redis(port=port, socket_connect_timeout=2).ping()
    finally:
        subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True, timeout=30)
        time.sleep(0.2)


def test_the_tests_log_in_to_postgresql_as_a_password_role_and_no_login_is_ever_trusted_by_the_script() -> None:
    """Issue 20 item 9: the script used to turn on `trust` for every loopback login of a fresh PostgreSQL."""
    import glob

    import psycopg
    from sqlalchemy.engine import make_url

    from tests.conftest import PG_ADMIN_URL, PG_PASSWORD_FILE, PG_TEST_ROLE

    code = [ln for ln in SCRIPT.read_text().splitlines() if not ln.lstrip().startswith("#")]
    assert not [ln for ln in code if "trust" in ln.split("#")[0]], "the script must never write `trust`"
    hba_files = glob.glob("/etc/postgresql/*/main/pg_hba.conf")
    before = {f: Path(f).read_text() for f in hba_files}

    out = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "creating PostgreSQL role" not in out.stdout and "adding" not in out.stdout  # set up once, kept
    assert {f: Path(f).read_text() for f in hba_files} == before  # a second run changes nothing

    ours = [ln for text in before.values() for ln in text.splitlines() if PG_TEST_ROLE in ln and not ln.startswith("#")]
    assert ours and all("scram-sha-256" in ln for ln in ours), ours  # added for this role only
    url = make_url(PG_ADMIN_URL)
    assert url.username == PG_TEST_ROLE and url.password
    if not os.environ.get("MODELPRESS_TEST_PG_PASSWORD"):
        assert oct(PG_PASSWORD_FILE.stat().st_mode & 0o777) == "0o600"
    dsn = dict(host=url.host, port=url.port, dbname="postgres", user=url.username)
    with psycopg.connect(**dsn, password=url.password) as c:
        assert c.execute("SELECT rolsuper, rolcreatedb FROM pg_roles WHERE rolname = current_user").fetchone() == (
            False, True)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(**dsn, password="not-" + url.password, connect_timeout=5)


def test_a_run_under_another_home_reuses_the_roles_password_and_the_first_home_still_logs_in(tmp_path: Path) -> None:
    """A fresh-HOME CI run used to set a new password on the one role, so the usual HOME's tests then failed
    with "password authentication failed" until the script ran again under it."""
    import psycopg
    from sqlalchemy.engine import make_url

    from tests.conftest import PG_ADMIN_URL

    if os.environ.get("MODELPRESS_TEST_PG_PASSWORD") or os.environ.get("MODELPRESS_TEST_PG_URL"):
        pytest.skip("the password comes from the environment here, not from files the script keeps")
    if os.getuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root; only root keeps the machine's copy of the password (/var/lib/modelpress)")
        pytest.skip("only root keeps the machine's copy of the password (/var/lib/modelpress)")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "XDG_STATE_HOME"} | {"HOME": str(home)}
    out = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "creating PostgreSQL role" not in out.stdout  # the role was left as it was
    new = (home / ".local" / "state" / "modelpress" / "test-pg-password")
    assert oct(new.stat().st_mode & 0o777) == "0o600"
    url = make_url(PG_ADMIN_URL)  # this HOME's password, as the rest of the suite uses it
    assert new.read_text().strip() == url.password
    with psycopg.connect(host=url.host, port=url.port, dbname="postgres", user=url.username, password=url.password,
                         connect_timeout=5) as c:
        assert c.execute("SELECT current_user").fetchone() == (url.username,)

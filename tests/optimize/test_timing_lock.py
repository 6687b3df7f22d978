"""The timing lock lives in a folder the service owns and never makes a job wait forever (issue 20 item 7)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest

from modelpress.optimize.timing_lock import (
    TIMING_LOCK_NAME,
    TimingLockTimeout,
    UnsafeTimingLockDir,
    default_timing_lock_dir,
    host_timing_lock,
    prepare_lock_dir,
)
from modelpress.settings import Settings

_HOLD = """
import sys, time
from modelpress.optimize.timing_lock import host_timing_lock
with host_timing_lock(sys.argv[1], phase="holder", timeout=30):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _mode(path) -> int:  # type: ignore[no-untyped-def]
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_default_lock_folder_is_under_the_home_and_is_created_private_with_a_0660_lock_file(tmp_path):
    settings = Settings(home=tmp_path / "home")
    assert settings.timing_lock_dir == tmp_path / "home" / "timing-lock"
    old = os.umask(0)  # a caller's careless umask must not make the folder or the lock world-writable
    try:
        with host_timing_lock(settings.timing_lock_dir, phase="p") as rec:
            pass
    finally:
        os.umask(old)
    assert rec["lock_file"] == str(settings.timing_lock_dir / TIMING_LOCK_NAME)
    assert _mode(settings.timing_lock_dir) == 0o750
    assert _mode(tmp_path / "home") == 0o750  # the missing parents too
    assert _mode(settings.timing_lock_dir / TIMING_LOCK_NAME) == 0o660


def test_without_settings_the_lock_folder_follows_the_home_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("MODELPRESS_TIMING_LOCK_DIR", raising=False)
    monkeypatch.setenv("MODELPRESS_HOME", str(tmp_path))
    assert default_timing_lock_dir() == tmp_path / "timing-lock"
    monkeypatch.setenv("MODELPRESS_TIMING_LOCK_DIR", str(tmp_path / "shared"))
    assert default_timing_lock_dir() == tmp_path / "shared"


@pytest.mark.parametrize("mode", [0o777, 0o1777])
def test_a_world_writable_lock_folder_is_refused_naming_the_setting(tmp_path, mode):
    folder = tmp_path / "open"
    folder.mkdir()
    os.chmod(folder, mode)
    with pytest.raises(UnsafeTimingLockDir, match="writable by every user .* set MODELPRESS_TIMING_LOCK_DIR"):
        with host_timing_lock(folder, phase="p"):
            pytest.fail("timed under a lock anyone could hold")
    assert not (folder / TIMING_LOCK_NAME).exists()  # refused before anything was created there
    with pytest.raises(UnsafeTimingLockDir, match="/tmp is writable by every user"):
        prepare_lock_dir("/tmp")  # the old default


def test_a_lock_folder_owned_by_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root; only root can give a folder to another user")
        pytest.skip("only root can give a folder to another user")
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o750)
    os.chown(folder, 65534, 65534)
    with pytest.raises(UnsafeTimingLockDir, match="owned by uid 65534, not by this service's user"):
        prepare_lock_dir(folder)


def test_a_symlink_planted_as_the_lock_file_is_refused_and_its_target_left_alone(tmp_path):
    target = tmp_path / "victim"
    target.write_text("precious")
    folder = prepare_lock_dir(tmp_path / "lock")
    (folder / TIMING_LOCK_NAME).symlink_to(target)
    with pytest.raises(UnsafeTimingLockDir, match="symbolic link"):
        with host_timing_lock(folder, phase="p"):
            pass
    assert target.read_text() == "precious"


def test_a_held_lock_makes_the_next_job_give_up_after_the_timeout_with_an_error_naming_the_setting(
        tmp_path, monkeypatch):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path), "8"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(TimingLockTimeout) as err:
            with host_timing_lock(tmp_path, phase="mine", timeout=1.0):
                pytest.fail("timed while another process held the lock")
        waited = time.monotonic() - t0
        assert 1.0 <= waited < 3.0, waited
        assert "MODELPRESS_TIMING_LOCK_TIMEOUT" in str(err.value) and "retried" in str(err.value)

        # Without an explicit timeout, the variable the worker was started with decides.
        monkeypatch.setenv("MODELPRESS_TIMING_LOCK_TIMEOUT", "0.5")
        t0 = time.monotonic()
        with pytest.raises(TimingLockTimeout, match="now 0.5 s"):
            with host_timing_lock(tmp_path, phase="mine"):
                pass
        assert time.monotonic() - t0 < 2.5
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with host_timing_lock(tmp_path, phase="after", timeout=5) as rec:  # the holder's death frees it at once
        pass
    assert rec["waited_s"] < 1.0


def test_a_lock_timeout_is_a_transient_error_so_the_job_is_retried_with_backoff():
    from modelpress.tasks.optimize_job import _transient_errors

    assert isinstance(TimingLockTimeout("x"), _transient_errors())
    assert isinstance(TimingLockTimeout("x"), TimeoutError)
    assert Settings(timing_lock_timeout=42).timing_lock_timeout == 42.0
    with pytest.raises(ValueError):
        Settings(timing_lock_timeout=0)


def test_a_worker_refuses_to_start_with_a_lock_folder_anyone_can_write_to(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPRESS_")}
    env.update({"MODELPRESS_HOME": str(tmp_path), "MODELPRESS_TIMING_LOCK_DIR": "/tmp"})
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "modelpress", "worker", "--embedded"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: timing lock folder /tmp is writable by every user") and \
        "MODELPRESS_TIMING_LOCK_DIR" in line
    assert time.monotonic() - t0 < 30

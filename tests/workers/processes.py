"""Long-running ``modelpress`` processes (beat, ops-worker, flower) for tests: logged, bounded, always stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


class Processes:
    """Start ``python -m modelpress ARGS`` in its own session with a log file; ``stop_all`` at teardown."""

    def __init__(self, env: dict[str, str], home: Path) -> None:
        self.env, self.home = env, home
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.log_path(name), "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "modelpress", *args], env={**self.env, **(extra_env or {})},
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def log_path(self, name: str) -> Path:
        return self.home / f"{name}.log"

    def log(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 120) -> None:
        """Poll ``check`` until true; on timeout, fail with every process's log tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.3)
        tails = "\n".join(f"--- {n} (exit {p.poll()}):\n{self.log(n)[-2500:]}" for n, p in self.procs.items())
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")

    def wait_log(self, name: str, text: str, *, count: int = 1, timeout: float = 120) -> None:
        def seen() -> bool:
            if self.procs[name].poll() is not None and self.log(name).count(text) < count:
                raise AssertionError(f"{name} exited with {self.procs[name].returncode}:\n{self.log(name)[-3000:]}")
            return self.log(name).count(text) >= count

        self.wait_for(f"{count}× {text!r} in {name}'s log", seen, timeout)

    def stop(self, name: str, timeout: float = 30) -> int:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        # Children (prefork pool) of a process that exited: never leave them running.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return proc.returncode

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

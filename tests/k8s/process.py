"""A long-running process under test (the operator): started in a session of its own with its output
appended to a log file, ready once a health URL answers, stopped gracefully or killed outright."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path


def http_ok(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
        return r.status == 200
    return False


class LoggedProcess:
    """`launch()` starts it; `kill()` is SIGKILL to its whole process group (no cleanup at all), `stop()` is
    SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def launch(self, argv: list[str], env: dict[str, str], ready_url: str, timeout: float, header: str = "") -> None:
        with open(self.log_path, "ab") as log:
            if header:
                log.write(header.encode())
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not http_ok(ready_url):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{argv[0]} did not get ready ({ready_url}):\n{self.log()[-4000:]}")
            time.sleep(0.2)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

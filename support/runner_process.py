"""A runner of the deliberation service, `python -m flows.service`, in a process of its own
(its own local Ray): the fault tests start and kill them, the service benchmark
(bench/service_burst.py) measures them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READY = b"service: deliberation"  # what the runner prints once its endpoints answer


class RunnerProcess:
    """`python -m flows.service` with `env`, its output (stdout and stderr) in `log`."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._terminated = False
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flows.service"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own group, so that stopping it stops its Ray too.
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Return once it serves; raise RuntimeError, with its log's end, if it exits first
        or is not ready in time."""
        give_up = time.monotonic() + timeout
        while READY not in self.log.read_bytes():
            if self.process.poll() is not None:
                raise RuntimeError(f"the runner exited {self.process.returncode}: {self.log_tail()}")
            if time.monotonic() > give_up:
                raise RuntimeError(f"the runner was not ready in {timeout:.0f} s: {self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def terminate(self) -> None:
        """SIGTERM to its group, once (it finishes what it runs, then stops its Ray); a second
        one, after the runner has put its handler away, would cut that short."""
        if self.process.poll() is None and not self._terminated:
            self._terminated = True
            os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self) -> None:
        """`terminate`, then SIGKILL to its group if it has not exited within a minute."""
        self.terminate()
        if self.process.poll() is None:
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)

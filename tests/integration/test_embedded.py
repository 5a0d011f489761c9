"""flows.runtime.embedded.ManagedProcess with real child processes: launched without waiting,
ready when it answers, and a server that dies at start is reported with its own last
words (the log is read before its directory is removed)."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from agents.errors import ConfigurationError
from flows.runtime.embedded import ManagedProcess


class PythonServer(ManagedProcess):
    """A few lines of Python as the server; ready once it accepts on `port`."""

    name = "test-server"

    def __init__(self, code: str, startup_timeout: float = 30.0) -> None:
        super().__init__(startup_timeout)
        self.code = code

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.code.replace("PORT", str(self.port))]

    def is_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False


LISTEN_AFTER_A_SECOND = (
    "import socket, time; time.sleep(1); s = socket.create_server(('127.0.0.1', PORT)); time.sleep(60)"
)


def test_launch_returns_before_the_server_is_ready_and_wait_until_ready_after() -> None:
    server = PythonServer(LISTEN_AFTER_A_SECOND)
    try:
        server.launch()
        assert not server.is_ready()
        server.wait_until_ready()
        assert server.is_ready()
    finally:
        server.stop()
    assert not server.is_ready()
    assert not server.workdir.exists()


def test_a_server_that_exits_at_start_is_reported_with_the_end_of_its_log() -> None:
    server = PythonServer("import sys; print('cannot bind: address in use', flush=True); sys.exit(3)")

    with pytest.raises(ConfigurationError) as refused:
        server.start()

    assert str(refused.value) == "test-server exited with code 3: cannot bind: address in use"
    assert not server.workdir.exists()


def test_a_server_that_never_answers_is_stopped_at_its_startup_timeout() -> None:
    server = PythonServer("print('loading', flush=True); import time; time.sleep(60)", startup_timeout=2)

    with pytest.raises(ConfigurationError) as refused:
        server.start()

    assert str(refused.value) == "test-server did not become ready within 2 s: loading"

    assert server._process is None  # stopped, not left running


def test_a_server_is_out_of_our_process_group_so_a_ctrl_c_to_us_does_not_reach_it() -> None:
    # The terminal sends Ctrl-C to the whole foreground group; the Prefect API must outlive
    # the flow's last log and event flushes, so we stop it ourselves, after them.
    server = PythonServer(LISTEN_AFTER_A_SECOND)
    try:
        server.start()
        assert server._process is not None
        assert os.getpgid(server._process.pid) != os.getpgid(0)
    finally:
        server.stop()

"""The terminal's live view (flows/cli/live.py): what it reads from task-run names and states,
and the CLI in a real pseudo-terminal, its screen replayed through a terminal emulator."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pyte
import pytest

from agents.models import AgentSpec, Stage
from agents.roles import Role
from flows.cli.live import TESTS, call_of, cell, progress_table
from tests.fake_llm import FakeLLMServer, ok

ROOT = Path(__file__).resolve().parents[2]


def test_calls_are_read_from_task_run_names() -> None:
    proposal = call_of("agent-qa-001.proposal", "Running", False, False, 1, 2.0)
    assert proposal is not None and (proposal.agent_id, proposal.stage) == ("agent-qa-001", Stage.PROPOSAL)
    critique = call_of("agent-qa-001.critique.r1.agent-dev-001", "Completed", True, True, 1, 1.0)
    assert critique is not None and (critique.agent_id, critique.stage) == ("agent-qa-001", Stage.CRITIQUE)
    synthesis = call_of("chair.synthesis", "Completed", True, True, 1, 1.0)
    assert synthesis is not None and synthesis.stage is Stage.SYNTHESIS
    tests = call_of("agent-dev-001.tests", "Completed", True, True, 1, 0.4)
    assert tests is not None and (tests.agent_id, tests.stage) == ("agent-dev-001", TESTS)
    assert call_of("something-else", "Completed", True, True, 1, 1.0) is None
    assert call_of("sandbox-probe", "Completed", True, True, 1, 1.0) is None


def test_the_tests_column_shows_only_when_code_was_run() -> None:
    agents = [AgentSpec(agent_id="agent-dev-001", role=Role.DEV, index=1, temperature=0.7, diverge=False)]
    proposal = call_of("agent-dev-001.proposal", "Completed", True, True, 1, 2.0)
    tests = call_of("agent-dev-001.tests", "Completed", True, True, 1, 0.4)
    assert proposal is not None and tests is not None
    without = [str(column.header) for column in progress_table(agents, [proposal]).columns]
    assert "TESTS" not in without
    table = progress_table(agents, [proposal, tests])
    assert [str(column.header) for column in table.columns][-1] == "TESTS"
    assert list(table.columns[-1].cells) == ["done 0.4s"]


def test_a_cell_says_running_retrying_done_or_how_it_failed() -> None:
    running = call_of("agent-qa-001.proposal", "Running", False, False, 1, 2.0)
    retrying = call_of("agent-qa-001.proposal", "AwaitingRetry", False, False, 2, 3.5)
    done = call_of("agent-qa-001.proposal", "Completed", True, True, 1, 1.25)
    cancelled = call_of("agent-qa-001.proposal", "Cancelled", True, False, 1, 9.0)
    assert None not in (running, retrying, done, cancelled)
    assert cell([running]) == "running 2.0s"  # type: ignore[list-item]
    assert cell([retrying]) == "retry (2) 3.5s"  # type: ignore[list-item]
    assert cell([done]) == "done 1.2s"  # type: ignore[list-item]
    assert cell([cancelled]) == "cancelled 9.0s"  # type: ignore[list-item]
    assert cell([done, cancelled]) == "2/2 1 of 2 failed 9.0s"  # type: ignore[list-item]
    assert cell([]) == ""


def run_in_terminal(argv: list[str], env: dict[str, str], columns: int, rows: int) -> tuple[int, bytes]:
    """Run `argv` with a pseudo-terminal as stdin and stdout; returns its exit code and
    everything it wrote there."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdin=terminal, stdout=terminal, stderr=subprocess.DEVNULL, close_fds=True
    )
    os.close(terminal)
    output = b""
    give_up = time.monotonic() + 240
    while time.monotonic() < give_up:
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the other side closed
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(controller)
    return process.wait(30), output


@pytest.mark.slow
def test_the_live_view_ends_showing_every_agent_final_state(
    fake_llm: FakeLLMServer, nats_url: str, prefect_api: None
) -> None:
    from prefect.settings import PREFECT_API_URL

    fake_llm.default = ok(delay=1.0)
    env = {
        **os.environ,
        "VLLM_URL": fake_llm.url,
        "NATS_URL": nats_url,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "TERM": "xterm-256color",
    }
    argv = [sys.executable, "-m", "flows.deliberate", "t", "--roles", "DEV,QA,DATA", "--rounds", "0"]
    columns, rows = 160, 200
    code, output = run_in_terminal(argv, env, columns, rows)
    assert code == 0, output[-2000:]

    screen = pyte.Screen(columns, rows)
    pyte.ByteStream(screen).feed(output.replace(b"\n", b"\r\n"))
    lines = [line.rstrip() for line in screen.display]
    last = max(i for i, line in enumerate(lines) if "calls done, finished in" in line)
    assert "6 of 6 calls done" in lines[last]  # three proposals, three rankings
    table = lines[last : last + 8]  # the title, the live table; the result table follows
    for agent in ("agent-dev-001", "agent-qa-001", "agent-data-001"):
        row = next(line for line in table if agent in line)
        assert row.count("done") == 2, table  # its proposal and its ranking

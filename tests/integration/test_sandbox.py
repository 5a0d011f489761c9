"""The code sandbox against hostile programs. Each program's own loop is bounded, so that a
broken sandbox shows up as a failed assertion (the hostile test passes, and with it the
check), not as a wrecked machine. The tests run in this process's child: that this process
goes on to run the next test is the "worker intact" half of each.

Note: these tests run as root here, where RLIMIT_NPROC does not apply; the sandbox stops
new processes with seccomp instead, which binds root too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.adapters import confine
from agents.adapters.sandbox import left_out_of_sandbox, run_suite
from agents.config import SandboxLimits
from agents.evidence import SuiteRun, TestSuite, check_tests_pass, plan_suites
from agents.models import ContextFile

pytestmark = pytest.mark.skipif(
    confine.isolation_problem() is not None, reason=str(confine.isolation_problem())
)

LIMITS = SandboxLimits(cpu_seconds=2, memory_mb=512, file_mb=4, wall_seconds=20)
QA = "agent-qa-001"


def run(
    solution: str, tests: str, limits: SandboxLimits = LIMITS, context: dict[str, str] | None = None
) -> SuiteRun:
    """DEV's `solution` run against QA's `tests`, both as they would be written in proposals,
    beside the `context` files (path -> text)."""
    suite = plan_suites({"agent-dev-001": f"```python\n{solution}```", QA: f"```python\n{tests}```"})
    planned = suite["agent-dev-001"]
    assert planned.runnable
    files = [ContextFile(path=path, content=text) for path, text in (context or {}).items()]
    return run_suite(planned, limits, files)


def score(result: SuiteRun) -> float:
    suite = TestSuite(candidate_id="agent-dev-001", solution="x = 1", tests={QA: ""}, expected={QA: 1})
    check = check_tests_pass(suite, result, code_expected=True)
    assert check.applicable, check.detail
    return check.score


def test_an_honest_solution_passes_the_other_members_tests() -> None:
    result = run("def double(x):\n    return 2 * x\n", "def test_double():\n    assert double(2) == 4\n")
    assert result.outcome == "finished" and result.passed == {QA: 1}
    assert score(result) == 1.0


def test_a_program_that_keeps_spawning_children_cannot_start_one() -> None:
    solution = """
import os, time

def spawn():
    children = 0
    for _ in range(200):  # bounded: a broken sandbox costs 200 sleeping children, no more
        pid = os.fork()
        if pid == 0:
            time.sleep(20)
            os._exit(0)
        children += 1
    return children
"""
    result = run(solution, "def test_spawn():\n    assert spawn() == 200\n")
    assert score(result) == 0.0
    assert "PermissionError" in " ".join(result.failures)


def test_an_infinite_loop_is_killed_at_the_cpu_limit() -> None:
    solution = (
        "import time\nend = time.monotonic() + 60  # bounded\nwhile time.monotonic() < end:\n    pass\n"
    )
    result = run(solution, "def test_loop():\n    assert True\n")
    assert (result.outcome, result.failed) == ("finished", {QA: 1}), result
    assert "the candidate's process for agent-qa-001's tests was killed" in result.detail
    assert "CPU limit of 2 s" in result.detail
    assert score(result) == 0.0


def test_a_sleeping_program_is_killed_at_the_wall_clock_limit() -> None:
    limits = LIMITS.model_copy(update={"wall_seconds": 2.0})
    result = run("import time\ntime.sleep(30)  # bounded\n", "def test_nothing():\n    assert True\n", limits)
    assert (result.outcome, result.failed) == ("finished", {QA: 1}), result
    assert "cut at the wall-clock limit of 2 s" in " ".join(result.failures)
    assert result.seconds < 15


def test_a_memory_hog_gets_no_more_than_its_limit() -> None:
    solution = """
def hog():
    chunks = []
    for _ in range(16):  # bounded: 16 x 256 MB = 4 GB at most
        chunks.append(bytearray(256 * 2**20))
    return len(chunks)
"""
    result = run(solution, "def test_hog():\n    assert hog() == 16\n")
    assert score(result) == 0.0
    assert "MemoryError" in " ".join(result.failures)


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server on 127.0.0.1 that records what anyone sends it."""
    server = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                received.append(connection.recv(100) or b"(connected)")

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], received
    server.close()


def test_a_connection_to_a_server_on_localhost_is_refused(listener: tuple[int, list[bytes]]) -> None:
    port, received = listener
    solution = f"""
import socket

def call_home():
    with socket.create_connection(("127.0.0.1", {port}), timeout=5) as connection:
        connection.sendall(b"secret data")
    return True
"""
    result = run(solution, "def test_call_home():\n    assert call_home()\n")
    assert score(result) == 0.0
    assert received == []


def test_no_secret_is_readable_from_the_environment_or_the_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIBERATION_TEST_SECRET", "s3cret-value")
    solution = """
import os

def leak():
    found = os.environ.get("DELIBERATION_TEST_SECRET", "")
    for pid in (os.getppid(), 1, os.getpid()):
        try:
            with open(f"/proc/{pid}/environ", "rb") as file:
                found += file.read().decode(errors="replace")
        except OSError:
            pass
    return found
"""
    tests = "def test_leak():\n    text = leak()\n    assert 's3cret-value' in text or 'PATH=' in text\n"
    result = run(solution, tests)
    assert score(result) == 0.0
    assert "in ''" in " ".join(result.failures)  # leak() found nothing


def test_nothing_is_written_outside_its_directory(tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    solution = f"""
def escape():
    with open({str(target)!r}, "w") as file:
        file.write("out")
    return True
"""
    result = run(solution, "def test_escape():\n    assert escape()\n")
    assert score(result) == 0.0
    assert not target.exists()


def test_no_signal_reaches_a_process_outside() -> None:
    # A process of this test's own, same user: only the sandbox stands between it and the kill.
    outside = subprocess.Popen(["sleep", "60"])
    try:
        solution = f"""
import os, signal

def kill():
    os.kill({outside.pid}, signal.SIGKILL)
    return True
"""
        result = run(solution, "def test_kill():\n    assert kill()\n")
        exit_status = outside.poll()
    finally:
        outside.kill()
        outside.wait()
    assert exit_status is None  # still running
    # The tests imported and ran: the kill itself was refused.
    assert (result.outcome, result.failed) == ("finished", {QA: 1})
    assert result.failures == [f"test_kill ({QA}): PermissionError: [Errno 1] Operation not permitted"]
    assert score(result) == 0.0


def test_a_flood_of_output_stops_at_the_file_size_limit() -> None:
    solution = (
        "import sys\nfor _ in range(10_000):  # bounded: 10 GB at most\n    sys.stdout.write('x' * 2**20)\n"
    )
    result = run(solution, "def test_nothing():\n    assert True\n")
    assert score(result) == 0.0
    assert "File too large" in " ".join(result.failures)


def test_the_environment_is_empty_but_for_the_sandbox_own() -> None:
    # The candidate's process runs no pytest: nothing of pytest's is in its environment.
    solution = "import os\nnames = sorted(os.environ)\n"
    expected = ["HOME", "LANG", "PYTHONDONTWRITEBYTECODE", "TMPDIR"]
    tests = f"def test_names():\n    assert names == {expected}\n"
    assert score(run(solution, tests)) == 1.0


def test_refusal_says_why_when_isolation_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(confine, "isolation_problem", lambda: "no Landlock on this kernel")
    result = run("x = 1\n", "def test_x():\n    assert x == 1\n")
    assert result.outcome == "not_run" and result.detail == "no Landlock on this kernel"
    assert result.seconds == 0.0  # nothing was started


def test_a_program_exiting_as_a_failed_confinement_would_still_fails_its_tests() -> None:
    # 125 is the launcher's exit code when it cannot confine; only its pipe says so.
    result = run("import os\nos._exit(125)\n", "def test_x():\n    assert True\n")
    assert result.outcome == "finished" and "exited with code 125" in result.detail
    assert result.failures == [
        f"{QA}'s tests did not import: judge.NoAnswer: no answer from the candidate: it closed its pipe"
    ]
    assert score(result) == 0.0


def test_a_confinement_that_fails_says_why_on_its_pipe_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    read_end, write_end = os.pipe()
    config = {"workdir": str(tmp_path / "missing"), "failure_fd": write_end}
    child = subprocess.Popen(
        [sys.executable, "-I", "-S", confine.__file__, json.dumps(config), "/usr/bin/touch", str(marker)],
        pass_fds=(write_end,),
    )
    os.close(write_end)
    assert child.wait(timeout=30) == confine.CONFINE_FAILED
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read().decode().startswith("cannot confine the program: [Errno 2]")
    assert not marker.exists()


MATHLIB = """
def gcd(a, b):
    return a if b == 0 else gcd(b, a % b)


def lcm(a, b):
    return a * b  # the bug the task is about


def lcm_all(numbers):
    result = 1
    for n in numbers:
        result = lcm(result, n)
    return result
"""


def test_context_files_are_readable_in_the_working_directory_but_not_writable() -> None:
    solution = """
import os, tempfile

def attempts():
    outcomes = {}
    for name, path in [("context", "mathlib.py"), ("new", "new.txt"),
                       ("scratch", os.path.join(tempfile.gettempdir(), "new.txt"))]:
        try:
            with open(path, "a") as file:
                file.write("changed")
            outcomes[name] = "written"
        except PermissionError:
            outcomes[name] = "refused"
    return outcomes
"""
    tests = """
from mathlib import gcd

def test_attempts():
    assert attempts() == {"context": "refused", "new": "refused", "scratch": "written"}
    assert open("lib/data.txt").read() == "42\\n" and gcd(12, 18) == 6
"""
    result = run(solution, tests, context={"mathlib.py": MATHLIB, "lib/data.txt": "42\n"})
    assert (result.outcome, result.passed, result.failures) == ("finished", {QA: 1}, [])


def test_the_candidates_definition_wins_over_the_context_modules_and_the_rest_of_it_stays() -> None:
    # The fix uses the module's own gcd without importing it: it runs inside mathlib.
    fix = "def lcm(a, b):\n    return a * b // gcd(a, b)\n"
    tests = """
import mathlib
from mathlib import lcm, lcm_all

def test_lcm():
    assert lcm(4, 6) == 12

def test_the_rest_of_the_project_sees_the_fix():
    assert lcm_all([2, 3, 4]) == 12 and mathlib.gcd(4, 6) == 2
"""
    fixed = run(fix, tests, context={"mathlib.py": MATHLIB})
    assert (fixed.passed, fixed.failures) == ({QA: 2}, [])
    unrelated = run("def double(x):\n    return 2 * x\n", tests, context={"mathlib.py": MATHLIB})
    assert unrelated.failed == {QA: 2}  # mathlib as it is: its bug stands


def test_the_suites_own_files_win_over_context_files_of_their_names_and_project_tests_stay_out() -> None:
    exits = "import os\nos._exit(3)\n"  # if pytest loaded it, the run would end with no report
    context = {
        "conftest.py": exits,
        "solution.py": "x = 0\n",
        "test_project.py": exits,
        "tests/conftest.py": exits,
    }
    files = [ContextFile(path=path, content=text) for path, text in context.items()]
    assert left_out_of_sandbox(files) == ["conftest.py", "solution.py"]
    result = run("x = 1\n", "def test_x():\n    assert x == 1\n", context=context)
    assert (result.outcome, result.passed) == ("finished", {QA: 1})

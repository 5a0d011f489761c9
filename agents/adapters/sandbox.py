"""Run a TestSuite in a confined child process and read what it gave.

The suite is written to a fresh temporary directory (the solution as `solution.py`, each
author's tests as `test_by_<author>.py`) and run by pytest in a child process that
agents/adapters/confine.py confines before exec: no network, no new processes, files written only in
that directory and read only there and in Python's own installation, CPU, memory, file-size
and open-file limits, an empty environment. This process adds the wall-clock limit and
reads pytest's JUnit XML report. See the README, "Running proposals' code", for the risk.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.etree import ElementTree

from agents.adapters import confine
from agents.config import SandboxLimits
from agents.evidence import SuiteRun, TestSuite, module_name

OUTPUT_SHOWN = 300
REPORT = "report.xml"

# Tests that import the module under another name (`from factorial import factorial`)
# get the solution: a finder consulted after every real one.
_CONFTEST = """\
import importlib.abc
import importlib.util
import pathlib
import sys

_SOLUTION = pathlib.Path(__file__).with_name("solution.py")


class _SolutionUnderAnyName(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if path is None and "." not in name:
            return importlib.util.spec_from_file_location(name, _SOLUTION)
        return None


sys.meta_path.append(_SolutionUnderAnyName())
"""


def _read_paths() -> list[str]:
    """What the confined Python may read and execute: its own installation and the system's
    shared libraries, nothing of the project or the user's."""
    python = os.path.realpath(sys.executable)
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(python)}
    paths |= {"/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", "/etc/ld.so.cache"}
    return sorted(p for p in paths if os.path.exists(p))


def _write_suite(suite: TestSuite, workdir: Path) -> dict[str, str]:
    """The files of a suite; returns the author of each test module."""
    (workdir / "solution.py").write_text(suite.solution)
    (workdir / "conftest.py").write_text(_CONFTEST)
    (workdir / "pytest.ini").write_text("[pytest]\n")  # the rootdir: pytest looks no higher
    (workdir / "tmp").mkdir()
    authors = {}
    for author, source in suite.tests.items():
        module = module_name(author)
        (workdir / f"{module}.py").write_text(source)
        authors[module] = author
    return authors


def run_suite(suite: TestSuite, limits: SandboxLimits) -> SuiteRun:
    """Run the other members' tests against the suite's solution, confined."""
    problem = confine.isolation_problem()
    if problem is not None:
        return SuiteRun(candidate_id=suite.candidate_id, outcome="not_run", detail=problem)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="deliberation-sandbox-") as root:
        workdir = Path(root, "work")
        workdir.mkdir()
        authors = _write_suite(suite, workdir)
        config = {
            "workdir": str(workdir),
            "read_paths": _read_paths(),
            "cpu_seconds": limits.cpu_seconds,
            "memory_bytes": limits.memory_mb * 2**20,
            "file_bytes": limits.file_mb * 2**20,
            "open_files": limits.open_files,
            "env": {
                "HOME": str(workdir),
                "TMPDIR": str(workdir / "tmp"),
                "LANG": "C.UTF-8",
                "PYTHONDONTWRITEBYTECODE": "1",
                "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
            },
        }
        python = os.path.realpath(sys.executable) if sys.prefix == sys.base_prefix else sys.executable
        pytest = [python, "-I", "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={REPORT}"]
        output_path = Path(root, "output.txt")  # outside the work directory: not the program's
        failures, failure_fd = os.pipe()
        config["failure_fd"] = failure_fd
        with open(output_path, "wb") as output, os.fdopen(failures, "rb") as confine_failure:
            child = subprocess.Popen(
                [sys.executable, "-I", "-S", confine.__file__, json.dumps(config), *pytest],
                cwd=workdir,
                env={},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                close_fds=True,
                pass_fds=(failure_fd,),
                start_new_session=True,
            )
            os.close(failure_fd)
            try:
                returncode = child.wait(timeout=limits.wall_seconds)
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                returncode = child.wait()
                timed_out = True
            not_confined = confine_failure.read().decode(errors="replace")
        seconds = round(time.monotonic() - started, 3)
        tail = _tail(output_path)
        run = SuiteRun(candidate_id=suite.candidate_id, outcome="finished", seconds=seconds)
        if not_confined:
            return run.model_copy(update={"outcome": "not_run", "detail": not_confined})
        if timed_out:
            return run.model_copy(
                update={
                    "outcome": "killed",
                    "detail": f"killed at the wall-clock limit of {limits.wall_seconds:g} s",
                }
            )
        if returncode < 0:
            return run.model_copy(update={"outcome": "killed", "detail": _killed_by(-returncode, limits)})
        report = workdir / REPORT
        if not report.is_file():
            return run.model_copy(
                update={"outcome": "killed", "detail": f"no test report (exit code {returncode}): {tail}"}
            )
        return _read_report(report, authors, suite, run)


def _killed_by(signum: int, limits: SandboxLimits) -> str:
    if signum in (signal.SIGXCPU, signal.SIGKILL):
        return f"killed at the CPU limit of {limits.cpu_seconds} s"
    return f"killed by {signal.Signals(signum).name}"


def _tail(path: Path) -> str:
    data = path.read_bytes()[-4096:].decode("utf-8", "replace")
    lines = [line for line in data.splitlines() if line.strip()]
    return " | ".join(lines[-3:])[-OUTPUT_SHOWN:]


def _read_report(report: Path, authors: dict[str, str], suite: TestSuite, run: SuiteRun) -> SuiteRun:
    """Counts per author from pytest's JUnit XML. A module that failed to import counts all
    the tests its author wrote as failed."""
    try:
        cases = ElementTree.parse(report).getroot().iter("testcase")
    except ElementTree.ParseError as exc:
        return run.model_copy(update={"outcome": "killed", "detail": f"unreadable test report: {exc}"})
    passed: dict[str, int] = {}
    failed: dict[str, int] = {}
    failures: list[str] = []
    for case in cases:
        classname, name = case.get("classname", ""), case.get("name", "")
        module = (classname or name).split(".")[0]
        author = authors.get(module)
        if author is None:
            continue
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if case.find("skipped") is not None:
            continue
        if problem is None:
            passed[author] = passed.get(author, 0) + 1
            continue
        collected = bool(classname)
        failed[author] = failed.get(author, 0) + (1 if collected else suite.expected.get(author, 1))
        message = problem.get("message") or ""
        if not collected:  # the message only says "collection failure"; the error is last
            errors = [line[1:] for line in (problem.text or "").splitlines() if line.startswith("E ")]
            message = errors[-1] if errors else message
        message = re.sub(r"\s+", " ", message).strip()[:120]
        where = f"{name} ({author})" if collected else f"{author}'s tests did not import"
        failures.append(f"{where}: {message}")
    return run.model_copy(update={"passed": passed, "failed": failed, "failures": failures})

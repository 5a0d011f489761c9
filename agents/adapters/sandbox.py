"""Run a TestSuite in a confined child process and read what it gave.

The suite is written to a fresh temporary directory, its working directory: the request's
context files under their paths, the solution as `solution.py`, each author's tests as
`test_by_<author>.py`. pytest runs those tests in a child process that
agents/adapters/confine.py confines before exec: no network, no new processes, the working
directory and Python's own installation readable only, files written only in a scratch
directory beside it (HOME, TMPDIR, the report), CPU, memory, file-size and open-file
limits, an empty environment. This process adds the wall-clock limit and reads pytest's
JUnit XML report. See the README, "Running proposals' code", for the risk.

Which code a test gets, by the module it imports: a context module is the context's file,
except that if it defines a name the candidate's solution also defines, the solution runs
in it after the file's own code (as if appended to the file), so the candidate's
definitions win and the rest of the project sees them; a module neither the context nor
Python has is the solution (`from factorial import factorial`).
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
from collections.abc import Sequence
from pathlib import Path
from string import Template
from xml.etree import ElementTree

from agents.adapters import confine
from agents.config import SandboxLimits
from agents.evidence import SuiteRun, TestSuite, module_name
from agents.models import ContextFile

OUTPUT_SHOWN = 300
REPORT = "report.xml"
TEST_MODULE_PREFIX = module_name("")
# The suite's own names at the top of the working directory (and `__init__.py`, which
# would make pytest import the tests as a package under another name, and `solution/`,
# which would shadow solution.py): a context path under one of them is left out.
OWN_NAMES = ("solution.py", "solution", "conftest.py", "pytest.ini", "__init__.py")

# Two finders. Before every other: a context module that defines a name the solution also
# defines gets the solution run in it after its own code. After every other: a module no
# one has is the solution, under whatever name a test imports it.
_CONFTEST = Template("""\
import ast
import importlib.abc
import importlib.machinery
import importlib.util
import pathlib
import sys

_HERE = pathlib.Path(__file__).parent
_SOLUTION = _HERE / "solution.py"
_SOURCE = _SOLUTION.read_text()
_OWN, _TESTS = $own, $tests


def _defined(source):
    try:
        body = ast.parse(source).body
    except (SyntaxError, ValueError):
        return set()
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {node.name for node in body if isinstance(node, kinds)}


_DEFINED = _defined(_SOURCE)


class _CandidateOverContext(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        if _DEFINED & vars(module).keys():
            exec(compile(_SOURCE, str(_SOLUTION), "exec"), vars(module))


class _ContextModules(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.origin is None or spec.loader is None:
            return None
        origin = pathlib.Path(spec.origin)
        if not origin.is_relative_to(_HERE):
            return None
        top = origin.relative_to(_HERE).parts[0]
        if top in _OWN or top.startswith(_TESTS):
            return None
        spec.loader = _CandidateOverContext(spec.loader)
        return spec


class _SolutionUnderAnyName(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if path is None and "." not in name:
            return importlib.util.spec_from_file_location(name, _SOLUTION)
        return None


sys.meta_path.insert(0, _ContextModules())
sys.meta_path.append(_SolutionUnderAnyName())
""").substitute(own=repr(OWN_NAMES), tests=repr(TEST_MODULE_PREFIX))


def left_out_of_sandbox(context: Sequence[ContextFile]) -> list[str]:
    """The context paths the suite's own files take the place of: not written."""
    return [file.path for file in context if _own_path(file.path)]


def _own_path(path: str) -> bool:
    top = path.split("/")[0]
    return top in OWN_NAMES or top.startswith(TEST_MODULE_PREFIX)


def _read_paths() -> list[str]:
    """What the confined Python may read and execute: its own installation and the system's
    shared libraries, nothing of the project or the user's."""
    python = os.path.realpath(sys.executable)
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(python)}
    paths |= {"/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", "/etc/ld.so.cache"}
    return sorted(p for p in paths if os.path.exists(p))


def _write_suite(suite: TestSuite, context: Sequence[ContextFile], workdir: Path) -> dict[str, str]:
    """The files of a suite and the context beside them; returns the author of each test
    module."""
    for file in context:
        if not _own_path(file.path):
            path = workdir / file.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(file.content, encoding="utf-8")
    (workdir / "solution.py").write_text(suite.solution)
    (workdir / "conftest.py").write_text(_CONFTEST)
    (workdir / "pytest.ini").write_text("[pytest]\n")  # the rootdir: pytest looks no higher
    authors = {}
    for author, source in suite.tests.items():
        module = module_name(author)
        (workdir / f"{module}.py").write_text(source)
        authors[module] = author
    return authors


def run_suite(suite: TestSuite, limits: SandboxLimits, context: Sequence[ContextFile] = ()) -> SuiteRun:
    """Run the other members' tests against the suite's solution, beside the context's
    files, confined."""
    problem = confine.isolation_problem()
    if problem is not None:
        return SuiteRun(candidate_id=suite.candidate_id, outcome="not_run", detail=problem)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="deliberation-sandbox-") as root:
        workdir, scratch = Path(root, "work"), Path(root, "scratch")
        workdir.mkdir()
        (scratch / "tmp").mkdir(parents=True)
        authors = _write_suite(suite, context, workdir)
        config = {
            "workdir": str(workdir),
            "write_paths": [str(scratch)],
            "read_paths": _read_paths(),
            "cpu_seconds": limits.cpu_seconds,
            "memory_bytes": limits.memory_mb * 2**20,
            "file_bytes": limits.file_mb * 2**20,
            "open_files": limits.open_files,
            "env": {
                "HOME": str(scratch),
                "TMPDIR": str(scratch / "tmp"),
                "LANG": "C.UTF-8",
                "PYTHONDONTWRITEBYTECODE": "1",
                "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
            },
        }
        python = os.path.realpath(sys.executable) if sys.prefix == sys.base_prefix else sys.executable
        report = scratch / REPORT
        # -B: the working directory is read-only, and -I ignores PYTHONDONTWRITEBYTECODE.
        # The test modules are named: the context's own tests and conftest files stay out.
        pytest = [python, "-I", "-B", "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
        pytest += [f"{module}.py" for module in authors]
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

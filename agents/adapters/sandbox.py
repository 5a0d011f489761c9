"""Run a TestSuite confined, with the judged code and its judges in separate processes, and
count what the tests gave from outside both.

For each author of tests, two processes, each confined by agents/adapters/confine.py before
exec (no network, no new processes, files read only in their own working directory and
Python's installation and written only in a scratch directory of their own, CPU, memory,
file-size and open-file limits, an empty environment):

- the candidate's process (judge/candidate.py): the request's context files and the
  solution as `solution.py` in its working directory, nothing of the tests;
- the harness (judge/harness.py): pytest over that author's `test_by_<author>.py`, beside
  the context files, where the modules the tests import from the candidate are proxies
  whose calls cross a pair of pipes to the candidate's process as JSON values (judge/wire.py).

The candidate's code never runs where the tests are run or counted, so whatever it does to
its own process can only make its own answers wrong or missing; an author's tests run
apart from every other author's, so they can only change their own outcomes. This process
keeps the count: it reads each harness's results file, counts every test of the author's
that gave no outcome as failed, and at the wall-clock limit cuts the authors' runs still
going, each for itself. See the README, "Running proposals' code".

Which code a test gets, by the module it imports: `solution`, and any top-level module
neither the context nor Python has (`from factorial import factorial`), is the candidate's
solution; a context module that defines a name the solution also defines is that module as
the candidate's process has it, with the solution run in it after the file's own code (the
candidate's definitions win, and the rest of the project, in that process, sees them);
any other context module is the context's file, imported in the harness.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agents.adapters import confine
from agents.config import SandboxLimits
from agents.evidence import SuiteRun, TestSuite, module_name
from agents.models import ContextFile

OUTPUT_SHOWN = 300
RESULTS = "results.jsonl"
RUNTIME_PACKAGE = "_sandbox_judge"  # judge/, as the confined processes import it
JUDGE = Path(__file__).with_name("judge")
TEST_MODULE_PREFIX = module_name("")
# The suite's own names at the top of a working directory (and `__init__.py`, which would
# make pytest import the tests as a package under another name, and `solution/`, which
# would shadow solution.py): a context path under one of them is left out.
OWN_NAMES = ("solution.py", "solution", "conftest.py", "pytest.ini", "__init__.py")
# After its harness has ended, how long a candidate's process has to see the closed pipe.
CANDIDATE_GRACE_SECONDS = 2.0
LAUNCH = "import sys; sys.path.insert(0, {runtime!r}); from {package}.{module} import main; main()"


def left_out_of_sandbox(context: Sequence[ContextFile]) -> list[str]:
    """The context paths the suite's own files take the place of: not written."""
    return [file.path for file in context if _own_path(file.path)]


def _own_path(path: str) -> bool:
    top = path.split("/")[0]
    return top in OWN_NAMES or top.startswith(TEST_MODULE_PREFIX)


def _defined(source: str) -> set[str]:
    try:
        body = ast.parse(source).body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return set()
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {node.name for node in body if isinstance(node, kinds)}


def taken_over(solution: str, context: Sequence[ContextFile]) -> list[str]:
    """The context modules that define a name the solution also defines, by module name: in
    them the candidate's definitions win."""
    defined, names = _defined(solution), []
    for file in context:
        parts = file.path.removesuffix(".py").split("/")
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if _own_path(file.path) or not file.path.endswith(".py") or not parts:
            continue
        if all(part.isidentifier() for part in parts) and defined & _defined(file.content):
            names.append(".".join(parts))
    return names


def _read_paths() -> list[str]:
    """What the confined Python may read and execute: its own installation and the system's
    shared libraries, nothing of the project or the user's."""
    python = os.path.realpath(sys.executable)
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(python)}
    paths |= {"/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", "/etc/ld.so.cache"}
    return sorted(p for p in paths if os.path.exists(p))


def _write_context(context: Sequence[ContextFile], workdir: Path) -> None:
    for file in context:
        if not _own_path(file.path):
            path = workdir / file.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(file.content, encoding="utf-8")


@dataclass
class _Confined:
    """A confined process, and the pipe on which its launcher says why it could not confine it."""

    process: subprocess.Popen[bytes]
    confine_failure: int
    output: Path
    killed: bool = False

    def kill(self) -> None:
        if self.process.poll() is None:
            self.killed = True
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def not_confined(self) -> str:
        with os.fdopen(self.confine_failure, "rb") as pipe:
            return pipe.read().decode(errors="replace")


class _Launcher:
    """Starts the confined processes of one suite run, each with a directory of its own."""

    def __init__(self, root: Path, limits: SandboxLimits) -> None:
        self._root, self._limits = root, limits
        runtime = root / "runtime"
        shutil.copytree(JUDGE, runtime / RUNTIME_PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
        self._runtime = str(runtime)
        self._read_paths = [*_read_paths(), self._runtime]
        venv = sys.prefix != sys.base_prefix
        self._python = sys.executable if venv else os.path.realpath(sys.executable)

    def start(self, name: str, workdir: Path, module: str, config: dict, fds: tuple[int, ...]) -> _Confined:
        """Run judge/<module>.py's main with `config` (which names `fds`, passed to it) in
        `workdir`, confined; its scratch directory is `<name>-scratch` beside."""
        scratch = self._root / f"{name}-scratch"
        (scratch / "tmp").mkdir(parents=True)
        env = {
            "HOME": str(scratch),
            "TMPDIR": str(scratch / "tmp"),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        if module == "harness":
            env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        failures, failure_fd = os.pipe()
        limits = self._limits
        confinement = {
            "workdir": str(workdir),
            "write_paths": [str(scratch)],
            "read_paths": self._read_paths,
            "cpu_seconds": limits.cpu_seconds,
            "memory_bytes": limits.memory_mb * 2**20,
            "file_bytes": limits.file_mb * 2**20,
            "open_files": limits.open_files,
            "env": env,
            "failure_fd": failure_fd,
        }
        code = LAUNCH.format(runtime=self._runtime, package=RUNTIME_PACKAGE, module=module)
        # -B: the working directory is read-only, and -I ignores PYTHONDONTWRITEBYTECODE.
        program = [self._python, "-I", "-B", "-c", code, json.dumps(config)]
        output = self._root / f"{name}-output.txt"  # outside its directories: not the program's
        with open(output, "wb") as stream:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", confine.__file__, json.dumps(confinement), *program],
                cwd=workdir,
                env={},
                stdin=subprocess.DEVNULL,
                stdout=stream,
                stderr=subprocess.STDOUT,
                close_fds=True,
                pass_fds=(failure_fd, *fds),
                start_new_session=True,
            )
        os.close(failure_fd)
        return _Confined(process, failures, output)


@dataclass
class _Judgment:
    """One author's tests against the candidate: the harness, and the candidate's process
    it talks to."""

    author: str
    module: str
    harness: _Confined
    candidate: _Confined
    results: Path


def _judge(
    launcher: _Launcher,
    root: Path,
    author: str,
    tests: str,
    context: Sequence[ContextFile],
    names: list[str],
    candidate_dir: Path,
) -> _Judgment:
    module = module_name(author)
    workdir = root / module
    workdir.mkdir()
    _write_context(context, workdir)
    (workdir / f"{module}.py").write_text(tests)
    (workdir / "pytest.ini").write_text("[pytest]\n")  # the rootdir: pytest looks no higher
    requests_read, requests_write = os.pipe()
    answers_read, answers_write = os.pipe()
    candidate_config = {"requests_fd": requests_read, "answers_fd": answers_write, "taken_over": names}
    candidate = launcher.start(
        f"candidate-{module}", candidate_dir, "candidate", candidate_config, (requests_read, answers_write)
    )
    results = root / f"{module}-scratch" / RESULTS
    harness_config = {
        "requests_fd": requests_write,
        "answers_fd": answers_read,
        "taken_over": names,
        "tests": f"{module}.py",
        "results": str(results),
    }
    harness = launcher.start(module, workdir, "harness", harness_config, (requests_write, answers_read))
    for fd in (requests_read, requests_write, answers_read, answers_write):
        os.close(fd)  # each end is its process's alone: a closed pipe then means it ended
    return _Judgment(author, module, harness, candidate, results)


def run_suite(suite: TestSuite, limits: SandboxLimits, context: Sequence[ContextFile] = ()) -> SuiteRun:
    """Run each other member's tests against the suite's solution, beside the context's
    files, confined, and count them here."""
    problem = confine.isolation_problem()
    if problem is not None:
        return SuiteRun(candidate_id=suite.candidate_id, outcome="not_run", detail=problem)
    started = time.monotonic()
    deadline = started + limits.wall_seconds
    with tempfile.TemporaryDirectory(prefix="deliberation-sandbox-") as name:
        root = Path(name)
        launcher = _Launcher(root, limits)
        candidate_dir = root / "candidate"
        candidate_dir.mkdir()
        _write_context(context, candidate_dir)
        (candidate_dir / "solution.py").write_text(suite.solution)
        names = taken_over(suite.solution, context)
        judgments: list[_Judgment] = []
        try:
            for author, tests in suite.modules.items():
                judgments.append(_judge(launcher, root, author, tests, context, names, candidate_dir))
            _wait(judgments, deadline)
        finally:
            for judgment in judgments:
                judgment.harness.kill()
                judgment.candidate.kill()
        run = SuiteRun(
            candidate_id=suite.candidate_id, outcome="finished", seconds=round(time.monotonic() - started, 3)
        )
        processes = [process for j in judgments for process in (j.harness, j.candidate)]
        not_confined = [why for why in (process.not_confined() for process in processes) if why]
        if not_confined:
            return run.model_copy(update={"outcome": "not_run", "detail": not_confined[0]})
        return _count(judgments, suite, limits, run)


def _wait(judgments: list[_Judgment], deadline: float) -> None:
    """Wait for every harness until the deadline, then give each candidate's process a
    moment to end. A harness still running at the deadline is killed with its candidate's
    process: that author's tests that gave no result fail for this candidate, and the
    other authors' stand. Whether the test or the candidate's code hung, it is one
    author's run: a test that hangs on every solution reports on none, so it weighs
    nothing (agents/evidence.py), and one the other solutions pass fails this one."""
    for judgment in judgments:
        try:
            judgment.harness.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            judgment.harness.kill()
            judgment.candidate.kill()
    grace = min(time.monotonic() + CANDIDATE_GRACE_SECONDS, deadline)
    for judgment in judgments:
        try:
            judgment.candidate.process.wait(timeout=max(0.0, grace - time.monotonic()))
        except subprocess.TimeoutExpired:
            judgment.candidate.kill()  # it had nothing left to answer: not held against it


def _killed_by(signum: int, limits: SandboxLimits) -> str:
    """Why a process ended by `signum`, which this process did not send."""
    if signum == signal.SIGXCPU:
        return f"killed at the CPU limit of {limits.cpu_seconds} s"
    if signum == signal.SIGKILL:  # the CPU limit's hard stop, a second after SIGXCPU, or the kernel's
        return f"killed by SIGKILL (the CPU limit of {limits.cpu_seconds} s, or out of memory)"
    return f"killed by {signal.Signals(signum).name}"


def _tail(path: Path) -> str:
    data = path.read_bytes()[-4096:].decode("utf-8", "replace")
    lines = [line for line in data.splitlines() if line.strip()]
    return " | ".join(lines[-3:])[-OUTPUT_SHOWN:]


def _brief(message: object) -> str:
    return re.sub(r"\s+", " ", str(message)).strip()[:120]


def _outcomes(judgment: _Judgment, limits: SandboxLimits) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """What the harness wrote: each test's outcome (a failure in any phase stands) and why,
    and the messages of the test module's failures to import. Lines not of the form, or
    about another module's tests, are ignored: the harness is the author's, not a witness
    for anyone else."""
    outcomes: dict[str, tuple[str, str]] = {}
    import_errors: list[str] = []
    if not judgment.results.is_file():
        return {}, []
    with open(judgment.results, "rb") as stream:
        lines = stream.read(limits.file_mb * 2**20).decode("utf-8", "replace").splitlines()
    prefix = f"{judgment.module}.py::"
    for line in lines:
        try:
            report = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if type(report) is not dict:
            continue
        test, outcome, message = report.get("test"), report.get("outcome"), report.get("message", "")
        if outcome == "error" and test is None:
            import_errors.append(_brief(message))
        elif (
            type(test) is str
            and test.startswith(prefix)
            and outcome in ("passed", "failed", "skipped")
            and outcomes.get(test, ("",))[0] != "failed"
        ):
            outcomes[test] = (outcome, _brief(message))
    return outcomes, import_errors


def _count(judgments: list[_Judgment], suite: TestSuite, limits: SandboxLimits, run: SuiteRun) -> SuiteRun:
    """Counts per other author, and each test's result by author (the candidate's own
    tests, run for agreement only, there alone). A test module that did not import counts
    all the tests its author wrote as failed; so does a harness that ended before reporting
    them all."""
    passed: dict[str, int] = {}
    failed: dict[str, int] = {}
    failures: list[str] = []
    details: list[str] = []
    results: dict[str, dict[str, bool | None]] = {}
    for judgment in judgments:
        author, expected = judgment.author, suite.expected.get(judgment.author, 1)
        outcomes, import_errors = _outcomes(judgment, limits)
        results[author] = {
            test.split("::", 1)[-1]: None if kind == "skipped" else kind == "passed"
            for test, (kind, _) in outcomes.items()
        }
        if author == suite.candidate_id:
            continue
        code = judgment.candidate.process.returncode
        if code > 0:
            details.append(f"the candidate's process for {author}'s tests exited with code {code}")
        elif code < 0 and not judgment.candidate.killed:
            details.append(f"the candidate's process for {author}'s tests was {_killed_by(-code, limits)}")
        if import_errors:
            failed[author] = failed.get(author, 0) + expected
            failures.append(f"{author}'s tests did not import: {import_errors[-1]}")
            continue
        for test, (kind, message) in outcomes.items():
            if kind == "passed":
                passed[author] = passed.get(author, 0) + 1
            elif kind == "failed":
                failed[author] = failed.get(author, 0) + 1
                failures.append(f"{test.rsplit('::', 1)[-1]} ({author}): {message}")
        missing = expected - len(outcomes)
        if missing > 0:
            failed[author] = failed.get(author, 0) + missing
            code = judgment.harness.process.returncode
            if judgment.harness.killed:  # what pytest printed so far is its progress dots
                why = f"cut at the wall-clock limit of {limits.wall_seconds:g} s"
            else:
                why = _killed_by(-code, limits) if code < 0 else f"exit code {code}"
                if output := _tail(judgment.harness.output):
                    why += f": {output}"
            failures.append(f"{missing} of {author}'s tests gave no result ({why})")
    return run.model_copy(
        update={
            "passed": passed,
            "failed": failed,
            "failures": failures,
            "results": results,
            "detail": "; ".join(details),
        }
    )

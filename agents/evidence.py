"""Evidence by execution: what to run for each proposal, and what the run says.

Each proposal's Python code is split into its solution (everything but tests) and its tests
(`test_*` functions, `Test*` classes, fixtures, and the imports and helpers beside them). A
proposal is then tested only with the tests the *other* members wrote: its own tests would
let it mark its own work. The pass and fail counts become the `tests_pass` check.

No I/O here: agents/adapters/sandbox.py runs a TestSuite, tasks/run_tests.py does so on a Ray worker.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from agents.checks import code_blocks
from agents.models import CheckResult

PYTHON_TAGS = frozenset({"python", "py", "python3"})
CHECK_NAME = "tests_pass"
MAX_FAILURES_SHOWN = 3


class TestSuite(BaseModel):
    """One sandbox run: a proposal's solution and the tests other members wrote."""

    __test__ = False  # not a pytest test class

    candidate_id: str
    solution: str
    tests: dict[str, str] = Field(description="Test module source by its author's agent id.")
    expected: dict[str, int] = Field(description="Tests counted in each author's source.")

    @property
    def runnable(self) -> bool:
        return bool(self.solution and self.tests)


class SuiteRun(BaseModel):
    """What a sandbox run of a TestSuite gave."""

    candidate_id: str
    outcome: Literal["finished", "killed", "not_run"]
    passed: dict[str, int] = Field(default_factory=dict, description="By the tests' author.")
    failed: dict[str, int] = Field(default_factory=dict, description="By the tests' author.")
    failures: list[str] = Field(default_factory=list, description="The first failures, briefly.")
    detail: str = ""
    seconds: float = 0.0


def python_blocks(text: str) -> list[str]:
    """The Python code of a proposal: blocks tagged python, and untagged blocks that parse."""
    blocks = []
    for language, code in code_blocks(text):
        if language in PYTHON_TAGS or not language and code.strip() and _parses(code):
            blocks.append(code)
    return blocks


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def _decorator_names(node: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    names = set()
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        names.add(ast.unparse(target).rsplit(".", 1)[-1])
    return names


def _is_test(node: ast.stmt) -> bool:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return node.name.startswith("test") or "fixture" in _decorator_names(node)
    if isinstance(node, ast.ClassDef):
        return node.name.startswith("Test") or any("TestCase" in ast.unparse(base) for base in node.bases)
    return False


def _is_main_guard(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)


def _defined_name(node: ast.stmt) -> str | None:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return node.name
    return None


def _count_tests(nodes: Sequence[ast.stmt]) -> int:
    count = 0
    for node in nodes:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
            count += 1
        elif isinstance(node, ast.ClassDef) and _is_test(node):
            count += sum(
                isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name.startswith("test")
                for item in node.body
            )
    return count


def _self_import(node: ast.stmt, defined: set[str]) -> bool:
    """`from factorial import factorial` beside the definition of factorial: in the solution
    it would import the solution itself."""
    return isinstance(node, ast.ImportFrom) and all(alias.name in defined for alias in node.names)


class _Split:
    """A proposal's Python, split: its solution, and the statements of its tests."""

    def __init__(self, text: str) -> None:
        solution: list[ast.stmt] = []
        broken: list[str] = []
        self.test_side: list[ast.stmt] = []
        for code in python_blocks(text):
            try:
                tree = ast.parse(code)
            except (SyntaxError, ValueError):
                broken.append(code)  # broken code stays: running it is the evidence
                continue
            has_tests = any(_is_test(node) for node in tree.body)
            for node in tree.body:
                if not has_tests:
                    solution.append(node)
                elif _is_test(node):
                    self.test_side.append(node)
                elif not (_is_main_guard(node) or isinstance(node, ast.Expr)):
                    # Code beside tests serves both: an implementation is part of the
                    # solution (a candidate's own definition replaces it in the tests it
                    # is run against), imports and helpers are part of the tests.
                    solution.append(node)
                    self.test_side.append(node)
        self.defined = {name for node in solution if (name := _defined_name(node))}
        solution = [node for node in solution if not _self_import(node, self.defined)]
        runnable = bool(broken) or any(not isinstance(n, ast.Import | ast.ImportFrom) for n in solution)
        self.solution = "\n\n".join([ast.unparse(node) for node in solution] + broken) if runnable else ""
        self.test_count = _count_tests(self.test_side)

    def tests_for(self, defined: set[str]) -> str:
        """This proposal's tests as a module testing a solution that defines `defined`: a
        helper of the same name as the solution's definition is left out."""
        kept = [
            node
            for node in self.test_side
            if _is_test(node)
            or isinstance(node, ast.Import | ast.ImportFrom)
            or _defined_name(node) not in defined
        ]
        return (
            "from solution import *  # noqa: F403\n\n"
            + "\n\n".join(ast.unparse(node) for node in kept)
            + "\n"
        )


def plan_suites(proposals: Mapping[str, str]) -> dict[str, TestSuite]:
    """For each proposal (by agent id), the suite that tests it with the other members'
    tests. A suite is run only if it has both a solution and tests (`runnable`)."""
    splits = {agent_id: _Split(text) for agent_id, text in proposals.items()}
    suites: dict[str, TestSuite] = {}
    for candidate_id, split in splits.items():
        others = {a: s for a, s in splits.items() if a != candidate_id and s.test_count}
        suites[candidate_id] = TestSuite(
            candidate_id=candidate_id,
            solution=split.solution + "\n" if split.solution else "",
            tests={author: s.tests_for(split.defined) for author, s in others.items()},
            expected={author: s.test_count for author, s in others.items()},
        )
    return suites


def module_name(author_id: str) -> str:
    """The test module holding one author's tests: `test_by_agent_qa_001`."""
    return "test_by_" + re.sub(r"\W", "_", author_id)


def check_tests_pass(suite: TestSuite, run: SuiteRun | None, code_expected: bool) -> CheckResult:
    """The `tests_pass` check: the share of the other members' tests the proposal passes.
    For a code task, a proposal with no solution to run them against (say, tests only)
    fails it: it gives no evidence of doing the task."""

    def not_applicable(detail: str) -> CheckResult:
        return CheckResult(name=CHECK_NAME, applicable=False, score=1.0, detail=detail)

    if not suite.tests:
        return not_applicable("no tests by other members to run it against")
    if not suite.solution:
        if code_expected:
            detail = "no Python solution to run the other members' tests against"
            return CheckResult(name=CHECK_NAME, applicable=True, score=0.0, detail=detail)
        return not_applicable("no Python code to run")
    if run is None:
        return not_applicable("not run")
    if run.outcome == "not_run":
        return not_applicable(f"not run: {run.detail}")
    if run.outcome == "killed":
        return CheckResult(name=CHECK_NAME, applicable=True, score=0.0, detail=run.detail)
    passed, failed = sum(run.passed.values()), sum(run.failed.values())
    if passed + failed == 0:
        return not_applicable("no test ran" + (f" ({run.detail})" if run.detail else ""))
    per_author = ", ".join(
        f"{author} {run.passed.get(author, 0)}/{run.passed.get(author, 0) + run.failed.get(author, 0)}"
        for author in suite.tests
    )
    detail = f"{passed} of {passed + failed} tests by other members pass ({per_author})"
    if run.failures:
        detail += "; failed: " + "; ".join(run.failures[:MAX_FAILURES_SHOWN])
    return CheckResult(name=CHECK_NAME, applicable=True, score=passed / (passed + failed), detail=detail)

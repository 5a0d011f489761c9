"""Evidence by execution: what to run for each proposal, and what the run says.

Each proposal's Python code is split into its solution (everything but tests) and its tests
(`test_*` functions, `Test*` classes, fixtures, and the imports and helpers beside them). A
proposal is then tested only with the tests the *other* members wrote: its own tests would
let it mark its own work. The pass and fail counts become the `tests_pass` check. Its own
tests count only against it (`own_tests`: code failing its own author's test that another
solution passes contradicts itself), and the tests of members who proposed no solution
count apart (`independent_tests`).

How the code splits: agents/code_split.py. No I/O here: agents/adapters/sandbox.py runs a
TestSuite, tasks/run_tests.py does so on a Ray worker.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Literal

from pydantic import BaseModel, Field

from agents.code_split import CodeSplit
from agents.examples import USER, UserTests, examples_module, shown_example, stated_examples
from agents.models import CheckResult, Tested

CHECK_NAME = "tests_pass"
USER_CHECK = "user_tests"
STATED_CHECK = "own_examples"
OWN_TESTS_CHECK = "own_tests"
INDEPENDENT_CHECK = "independent_tests"
STATED = "stated"  # the author of a solution's own docstring examples in its suite
MAX_FAILURES_SHOWN = 3


class TestSuite(BaseModel):
    """One sandbox run: a proposal's solution and the tests other members wrote."""

    __test__ = False  # not a pytest test class

    candidate_id: str
    solution: str
    tests: dict[str, str] = Field(description="Test module source by its author's agent id.")
    expected: dict[str, int] = Field(description="Tests counted in each author's source.")
    own_tests: int = Field(default=0, description="Tests the candidate wrote (not counted for it).")
    testers: list[str] = Field(
        default_factory=list,
        description="The authors among `tests` who proposed no solution of their own: independent "
        "testers (the `independent_tests` check).",
    )
    own: str = Field(
        default="",
        description="The candidate's own tests as a module, run against its solution only to "
        "weigh its tests by agreement: they never count for its own score.",
    )
    user: str = Field(
        default="",
        description="The user's tests as a module (agents/examples.py): the request's examples "
        "and test file, counted apart from the members' (the `user_tests` check).",
    )

    stated: str = Field(
        default="",
        description="The doctest examples of the solution's own docstrings as a module: code "
        "failing them contradicts itself (the `own_examples` check).",
    )

    @property
    def runnable(self) -> bool:
        return bool(self.solution and (self.tests or self.own or self.user or self.stated))

    @property
    def modules(self) -> dict[str, str]:
        """Every test module run against the solution, by author: the others', its own, the
        user's, its docstrings' examples."""
        return (
            self.tests
            | ({self.candidate_id: self.own} if self.own else {})
            | ({USER: self.user} if self.user else {})
            | ({STATED: self.stated} if self.stated else {})
        )


class SuiteRun(BaseModel):
    """What a sandbox run of a TestSuite gave."""

    candidate_id: str
    outcome: Literal["finished", "not_run"]
    passed: dict[str, int] = Field(default_factory=dict, description="By the tests' author.")
    failed: dict[str, int] = Field(default_factory=dict, description="By the tests' author.")
    failures: list[str] = Field(default_factory=list, description="The first failures, briefly.")
    results: dict[str, dict[str, bool | None]] = Field(
        default_factory=dict,
        description="Each test that reported, by author then name: passed, failed, or None "
        "if skipped (the candidate's own included; it is not in `passed` and `failed`).",
    )
    detail: str = ""
    seconds: float = 0.0


def plan_suites(proposals: Mapping[str, str], user: UserTests | None = None) -> dict[str, TestSuite]:
    """For each proposal (by agent id), the suite that tests it with the other members'
    tests, and the user's (`user`). A suite is run only if it has both a solution and tests
    (`runnable`)."""
    splits = {agent_id: CodeSplit(text) for agent_id, text in proposals.items()}
    suites: dict[str, TestSuite] = {}
    for candidate_id, split in splits.items():
        others = {a: s for a, s in splits.items() if a != candidate_id and s.test_count}
        users = user.module_for(split.defined) if user is not None and split.solution else ""
        stated = stated_examples(split.solution) if split.solution else []
        suites[candidate_id] = TestSuite(
            candidate_id=candidate_id,
            solution=split.solution + "\n" if split.solution else "",
            tests={author: s.tests_for(split.defined) for author, s in others.items()},
            expected={author: s.test_count for author, s in others.items()}
            | ({USER: user.count} if users and user is not None else {})
            | ({STATED: len(stated)} if stated else {}),
            own_tests=split.test_count,
            testers=[author for author in others if not splits[author].solution],
            own=split.tests_for(split.defined) if split.solution and split.test_count else "",
            user=users,
            stated=examples_module(stated),
        )
    return suites


def module_name(author_id: str) -> str:
    """The test module holding one author's tests: `test_by_agent_qa_001`."""
    return "test_by_" + re.sub(r"\W", "_", author_id)


def check_tests_pass(
    suite: TestSuite, run: SuiteRun | None, code_expected: bool, agreed: Agreement | None = None
) -> CheckResult:
    """The `tests_pass` check: the share of the other members' tests the proposal passes,
    weighed by `agreed` when given (`weighted_share`). For a code task, a proposal with no
    solution to run them against (say, tests only) fails it: it gives no evidence of doing
    the task. Tests only fail it even when no other member wrote tests: they are not a
    solution that no test reached."""

    def not_applicable(detail: str) -> CheckResult:
        return CheckResult(name=CHECK_NAME, applicable=False, score=1.0, detail=detail)

    if code_expected and not suite.solution and (suite.tests or suite.own_tests):
        detail = (
            "tests only: no Python solution to run tests against"
            if suite.own_tests
            else "no Python solution to run the other members' tests against"
        )
        return CheckResult(name=CHECK_NAME, applicable=True, score=0.0, detail=detail)
    if not suite.tests:
        return not_applicable("no tests by other members to run it against")
    if not suite.solution:
        return not_applicable("no Python code to run")
    if run is None:
        return not_applicable("not run")
    if run.outcome == "not_run":
        return not_applicable(f"not run: {run.detail}")
    passed = sum(run.passed.get(author, 0) for author in suite.tests)
    failed = sum(run.failed.get(author, 0) for author in suite.tests)
    if passed + failed == 0:
        return not_applicable("no test ran" + (f" ({run.detail})" if run.detail else ""))
    per_author = ", ".join(
        f"{author} {run.passed.get(author, 0)}/{run.passed.get(author, 0) + run.failed.get(author, 0)}"
        for author in suite.tests
    )
    detail = f"{passed} of {passed + failed} tests by other members pass ({per_author})"
    score = passed / (passed + failed)
    if agreed is not None:
        weighted, unheard = weighted_share(suite, run, agreed)
        if unheard:
            detail += f"; left out, agreeing with no solution: the tests of {', '.join(unheard)}"
        if weighted is None:
            return not_applicable(detail + "; no test left to count")
        if round(weighted, 4) != round(score, 4):
            detail += f"; by agreement {weighted:.2f}"
        score = weighted
    if run.failures:
        detail += "; failed: " + "; ".join(run.failures[:MAX_FAILURES_SHOWN])
    return CheckResult(name=CHECK_NAME, applicable=True, score=round(score, 4), detail=detail)


def check_user_tests(suite: TestSuite, run: SuiteRun | None, user: UserTests) -> CheckResult | None:
    """The `user_tests` check: the share of the user's tests (the request's examples and
    test file) the solution passes; None where there are none, or no solution to run them
    on. A solution failing one ranks below those passing them all (agents/ranking.py)."""
    if not suite.user or not suite.solution:
        return None
    if run is None or run.outcome == "not_run":
        detail = f"not run: {run.detail}" if run is not None and run.detail else "not run"
        return CheckResult(name=USER_CHECK, applicable=False, score=1.0, detail=detail)
    results = run.results.get(USER, {})
    passed, failed = run.passed.get(USER, 0), run.failed.get(USER, 0)
    if passed + failed == 0:
        return CheckResult(name=USER_CHECK, applicable=False, score=1.0, detail="none of your tests ran")
    detail = f"{passed} of {passed + failed} of your tests pass ({user.describe()})"
    # Each failed example by what it states; and a module that did not import, or a run cut
    # short, as the sandbox said it.
    missed = [user.shown(test) for test, ok in results.items() if ok is False]
    missed += [f for f in run.failures if f.startswith(f"{USER}'s tests") or f" of {USER}'s tests " in f]
    if missed:
        detail += "; failed: " + "; ".join(missed[:MAX_FAILURES_SHOWN])
    return CheckResult(
        name=USER_CHECK, applicable=True, score=round(passed / (passed + failed), 4), detail=detail
    )


def check_stated_examples(suite: TestSuite, run: SuiteRun | None) -> CheckResult | None:
    """The `own_examples` check: the share of the examples its own docstrings state that the
    solution's code gives; None where it states none or did not run. Code failing one
    contradicts itself, which ranks it below code that does not (agents/ranking.py)."""
    if not suite.stated or not suite.solution or run is None or run.outcome == "not_run":
        return None
    passed, failed = run.passed.get(STATED, 0), run.failed.get(STATED, 0)
    if passed + failed == 0:
        return None
    detail = f"its code gives {passed} of the {passed + failed} examples its docstrings state"
    examples = stated_examples(suite.solution)
    missed = [
        shown_example(examples, test) or test
        for test, ok in run.results.get(STATED, {}).items()
        if ok is False
    ]
    if missed:
        detail += "; not: " + "; ".join(missed[:MAX_FAILURES_SHOWN])
    return CheckResult(
        name=STATED_CHECK, applicable=True, score=round(passed / (passed + failed), 4), detail=detail
    )


def _counted(
    results: Mapping[str, bool | None], agreements: Mapping[str, float]
) -> tuple[int, int, list[str]]:
    """Passed, failed, and the failed tests' names, of one author's tests in one run: each
    test that some solution passes (one that passes none, `assert False`, is no evidence); a
    test that gave no result in this run failed here, one skipped here does not count."""
    passed, failed = 0, []
    for test, share in agreements.items():
        ok = results.get(test, False)
        if share == 0 or ok is None:
            continue
        if ok:
            passed += 1
        else:
            failed.append(test)
    return passed, len(failed), failed


def check_independent_tests(
    suite: TestSuite, run: SuiteRun | None, agreed: Agreement, code_expected: bool, council_has_testers: bool
) -> CheckResult | None:
    """The `independent_tests` check: the share of the tests by members who proposed no
    solution (independent testers, as AgentCoder's test designer) that the solution passes.
    They say what the task asks of every solution, where an author's tests say mostly what
    its own code does, so they rank above the authors' (agents/ranking.py), unweighed by
    agreement: two solutions that agree are weak evidence against them. Where the council
    has testers (`council_has_testers`), a proposal of a code task with code but no
    solution fails it, as it fails `tests_pass`: tests are no answer to the task. None where
    no tester's test reached the solution."""
    if council_has_testers and code_expected and not suite.solution and (suite.tests or suite.own_tests):
        return CheckResult(
            name=INDEPENDENT_CHECK,
            applicable=True,
            score=0.0,
            detail="no Python solution to run them against",
        )
    if not suite.testers or not suite.solution or run is None or run.outcome != "finished":
        return None
    passed = failed = 0
    missed: list[str] = []
    for author in suite.testers:
        p, f, names = _counted(run.results.get(author, {}), agreed.get(author, {}))
        passed, failed = passed + p, failed + f
        missed += [f"{author}: {name}" for name in names]
    if passed + failed == 0:
        return None
    detail = (
        f"{passed} of {passed + failed} tests by members without a solution of their own pass "
        f"({', '.join(suite.testers)})"
    )
    if missed:
        detail += "; failed: " + "; ".join(missed[:MAX_FAILURES_SHOWN])
    return CheckResult(
        name=INDEPENDENT_CHECK, applicable=True, score=round(passed / (passed + failed), 4), detail=detail
    )


def check_own_tests(suite: TestSuite, run: SuiteRun | None, agreed: Agreement) -> CheckResult | None:
    """The `own_tests` check: the share of its author's own tests the solution passes, of
    those some solution passes. Code failing a test its own author wrote, that another
    solution passes, contradicts itself, which ranks it with code contradicting its
    docstring (agents/ranking.py). A test no solution passes says nothing of the code. None
    where its author wrote no tests, or they did not run."""
    if not suite.own or not suite.solution or run is None or run.outcome != "finished":
        return None
    passed, failed, missed = _counted(
        run.results.get(suite.candidate_id, {}), agreed.get(suite.candidate_id, {})
    )
    if passed + failed == 0:
        return None
    detail = f"its code passes {passed} of its author's {passed + failed} tests that some solution passes"
    if missed:
        detail += "; not: " + "; ".join(missed[:MAX_FAILURES_SHOWN])
    return CheckResult(
        name=OWN_TESTS_CHECK, applicable=True, score=round(passed / (passed + failed), 4), detail=detail
    )


# Author -> test -> the share of the solutions it ran on that pass it.
Agreement = dict[str, dict[str, float]]


def agreement(runs: Iterable[SuiteRun]) -> Agreement:
    """How far each test agrees with the solutions: the share of those it ran on (its
    author's own included) that pass it, as in CodeT's dual execution agreement. A test
    that fails every solution (`assert False`) agrees with none: 0. Where an author's tests
    ran, a test of theirs that gave no result failed (a module that did not import, a run
    cut short); one skipped there does not count either way."""
    finished = [run for run in runs if run.outcome == "finished"]
    names: dict[str, set[str]] = {}
    for run in finished:
        for author, tests in run.results.items():
            names.setdefault(author, set()).update(tests)
    ran: dict[str, dict[str, list[bool]]] = {
        author: {name: [] for name in tests} for author, tests in names.items()
    }
    for run in finished:
        for author, tests in run.results.items():
            for name in names[author]:
                ok = tests.get(name, False)
                if ok is not None:
                    ran[author][name].append(ok)
    return {
        author: {name: sum(oks) / len(oks) for name, oks in tests.items() if oks}
        for author, tests in ran.items()
    }


def weighted_share(suite: TestSuite, run: SuiteRun, agreed: Agreement) -> tuple[float | None, list[str]]:
    """The share of the other members' tests a solution passes, each test weighed by its
    agreement, each author by the mean agreement of their tests: one test that fails every
    solution, or a flood of tests only one solution passes, cannot outweigh the tests the
    solutions agree on. A test that gave no result here failed here, at its own agreement;
    one skipped here counts neither way; one that reported on no solution (it hangs, or
    skips, everywhere) agrees with none and weighs nothing, whatever it did here. Returns
    the share (None if no test is left to count) and the authors left out because none of
    their tests agrees with any solution (or reported on any)."""
    total = weight = 0.0
    unheard = []
    for author in suite.tests:
        agreements = agreed.get(author, {})
        author_weight = sum(agreements.values()) / len(agreements) if agreements else 0.0
        if author_weight == 0:
            unheard.append(author)
            continue
        results = run.results.get(author, {})
        counted = passed = 0.0
        for test, share in agreements.items():
            ok = results.get(test, False)
            if ok is not None:
                counted += share
                passed += share if ok else 0.0
        if counted == 0:
            continue
        total += author_weight * passed / counted
        weight += author_weight
    return (total / weight if weight else None), unheard


# A test more than half the solutions it ran on pass: one the solutions agree on.
CONSENSUS = 0.5


def tested_standing(
    check: CheckResult | None,
    suite: TestSuite | None = None,
    run: SuiteRun | None = None,
    agreed: Agreement | None = None,
) -> Tested:
    """What a `tests_pass` check (or its absence) says of a proposal's code: it passed the
    other members' tests, none of them reached it, or it failed (a test, a run cut short,
    or no solution to run). With the tests' agreement, only the tests most solutions pass
    decide it: a test only its author's own solution passes weighs little in the score,
    and must not put every other solution among the failed."""
    if check is None or not check.applicable:
        return "untested"
    if suite is None or run is None or agreed is None or run.outcome != "finished":
        return "passed" if check.passed else "failed"
    reached = False
    for author in suite.tests:
        results = run.results.get(author, {})
        for test, share in agreed.get(author, {}).items():
            if share <= CONSENSUS or (ok := results.get(test, False)) is None:
                continue
            if not ok:
                return "failed"
            reached = True
    return "passed" if reached else "untested"

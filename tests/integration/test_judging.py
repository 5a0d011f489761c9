"""Cheaters against the judgment: candidates that try to pass tests they fail, and a test
author that tries to pass another member's tests, each against the real sandbox. Each ends
with the cheater's tests failed, the honest solution passing the same tests, and this
process (the worker) going on to the next. Every loop is bounded, and every run has the
sandbox's wall-clock limit.

Also what the proxy carries and what it does not: what it does not carry fails the test,
whatever the test expected.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from agents.adapters import confine
from agents.adapters.sandbox import run_suite
from agents.config import SandboxLimits
from agents.evidence import SuiteRun, agreement, check_tests_pass, plan_suites

pytestmark = pytest.mark.skipif(
    confine.isolation_problem() is not None, reason=str(confine.isolation_problem())
)

LIMITS = SandboxLimits(cpu_seconds=2, memory_mb=512, file_mb=4, wall_seconds=20)
DEV, QA, SAB = "agent-dev-001", "agent-qa-001", "agent-sab-001"
HONEST = "def factorial(n):\n    return 1 if n < 2 else n * factorial(n - 1)\n"
QA_TESTS = """
from factorial import factorial

def test_small_values():
    assert [factorial(n) for n in range(6)] == [1, 1, 2, 6, 24, 120]

def test_ten():
    assert factorial(10) == 3628800
"""


def judge(solution: str, tests: dict[str, str] | None = None) -> SuiteRun:
    """DEV's `solution` run against the other members' tests (QA's by default), all as
    written in proposals."""
    proposals = {DEV: solution, **(tests or {QA: QA_TESTS})}
    suites = plan_suites({author: f"```python\n{code}```" for author, code in proposals.items()})
    assert suites[DEV].runnable
    return run_suite(suites[DEV], LIMITS)


def assert_cheat_fails(cheater: str) -> None:
    cheated = judge(cheater)
    assert cheated.outcome == "finished", cheated
    assert (cheated.passed, cheated.failed) == ({}, {QA: 2}), cheated
    honest = judge(HONEST)
    assert (honest.outcome, honest.passed, honest.failed) == ("finished", {QA: 2}, {}), honest


def test_patching_pytest_in_the_candidates_module_passes_nothing() -> None:
    # The cheat of issue 24: before, it passed every test.
    assert_cheat_fails(
        "import _pytest.python as _p\n_p.Function.runtest = lambda self: None\n\n"
        "def factorial(n: int) -> int:\n    return 42\n"
    )


@pytest.mark.parametrize("exit_call", ["os._exit(0)", "sys.exit(0)"])
def test_exiting_0_from_inside_a_call_fails_the_tests(exit_call: str) -> None:
    assert_cheat_fails(f"import os, sys\n\ndef factorial(n):\n    {exit_call}\n")


def test_fake_result_files_written_wherever_the_candidate_can_are_not_read() -> None:
    outside = f"/tmp/deliberation-fake-{uuid.uuid4().hex}.xml"
    cheater = f"""
import atexit, json, os, pathlib, tempfile

PASSED = "".join(
    json.dumps({{"test": f"test_by_agent_qa_001.py::{{name}}", "outcome": "passed", "message": ""}}) + "\\n"
    for name in ("test_small_values", "test_ten")
)
JUNIT = '<testsuite><testcase classname="test_by_agent_qa_001" name="test_ten"/></testsuite>'


def fake_everywhere():
    here = pathlib.Path.cwd()
    places = [here, here.parent, pathlib.Path(tempfile.gettempdir()), pathlib.Path(os.environ["HOME"])]
    places += [here.parent / "test_by_agent_qa_001-scratch", pathlib.Path("/tmp")]
    for place in places:
        for name, text in (("results.jsonl", PASSED), ("report.xml", JUNIT), ("junit.xml", JUNIT)):
            try:
                (place / name).write_text(text)
            except OSError:
                pass
    try:
        pathlib.Path({outside!r}).write_text(JUNIT)
    except OSError:
        pass


fake_everywhere()
atexit.register(fake_everywhere)  # after any report the process itself would write


def factorial(n):
    fake_everywhere()
    return 42
"""
    assert_cheat_fails(cheater)
    assert not Path(outside).exists()


@pytest.mark.parametrize(
    "garbage",
    [
        'b"\\xff\\xff\\xff\\xff"',  # a message larger than any allowed
        'struct.pack(">I", 9) + b"not json!"',
        'struct.pack(">I", 21) + b\'{"value":{"eval":1}}\'',  # no such form of a value
    ],
)
def test_a_candidate_that_answers_garbage_on_its_pipe_fails_the_tests(garbage: str) -> None:
    # Its pipe's number is in its own process's arguments: it writes there before answering.
    assert_cheat_fails(f"""
import json, os, struct, sys

def factorial(n):
    os.write(json.loads(sys.argv[1])["answers_fd"], {garbage})
    return 1 if n < 2 else n * factorial(n - 1)
""")


def test_patching_builtins_in_the_candidates_process_passes_nothing() -> None:
    assert_cheat_fails("""
import builtins

class _Passes(Exception):
    pass

builtins.AssertionError = _Passes
builtins.isinstance = lambda *args: True
builtins.len = lambda value: 6
builtins.list = lambda *args: [1, 1, 2, 6, 24, 120]

def factorial(n):
    return 42
""")


def test_an_object_that_equals_everything_equals_nothing_here() -> None:
    assert_cheat_fails("""
class _Anything:
    def __eq__(self, other):
        return True

    __hash__ = object.__hash__

def factorial(n):
    return _Anything()
""")


def test_replacing_the_test_functions_through_sys_modules_passes_nothing() -> None:
    assert_cheat_fails("""
import importlib.abc, importlib.util, sys, types

def _passing(*args, **kwargs):
    return None

def _replace_the_tests():
    for name, module in list(sys.modules.items()):
        if name.startswith("test_"):
            for attribute, value in list(vars(module).items()):
                if attribute.startswith("test_"):
                    setattr(module, attribute, _passing)
                    if isinstance(value, types.FunctionType):
                        value.__code__ = _passing.__code__  # whoever holds the function

class _PassingTests(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name.startswith("test_"):
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.test_small_values = module.test_ten = _passing

sys.meta_path.insert(0, _PassingTests())
_replace_the_tests()

def factorial(n):
    _replace_the_tests()
    return 42
""")


def test_the_candidates_names_do_not_replace_builtins_or_pytests_in_the_tests() -> None:
    # The tests begin with `from solution import *`: these would answer for the test's own
    # assertions, or skip its tests.
    cheater = """
import pytest

pytestmark = pytest.mark.skip("nothing to see")

def all(values):
    return True

def sorted(values):
    return [3628800]

def factorial(n):
    return 42
"""
    tests = """
def test_small_values():
    assert all(factorial(n) == f for n, f in [(0, 1), (5, 120)])

def test_ten():
    assert sorted([factorial(10)]) == [3628800]
"""
    cheated = judge(cheater, {QA: tests})
    assert (cheated.passed, cheated.failed) == ({}, {QA: 2}), cheated
    honest = judge(HONEST, {QA: tests})
    assert (honest.passed, honest.failed) == ({QA: 2}, {}), honest


def test_a_test_file_cannot_mark_another_members_tests_as_passed() -> None:
    saboteur = """
import json, os, pathlib
import _pytest.python as _p
import _pytest.runner

# Every test of this process passes, and every report says so.
_p.Function.runtest = lambda self: None
_original = _pytest.runner.TestReport.from_item_and_call.__func__

def _passed(cls, item, call):
    report = _original(cls, item, call)
    report.outcome = "passed"
    return report

_pytest.runner.TestReport.from_item_and_call = classmethod(_passed)

LINES = "".join(
    json.dumps({"test": f"test_by_agent_qa_001.py::{name}", "outcome": "passed", "message": ""}) + "\\n"
    for name in ("test_small_values", "test_ten")
)
for place in (pathlib.Path(os.environ["HOME"]), pathlib.Path.cwd().parent / "test_by_agent_qa_001-scratch"):
    try:
        with open(place / "results.jsonl", "a") as results:
            results.write(LINES)
    except OSError:
        pass


def test_anything():
    assert False
"""
    tests = {QA: QA_TESTS, SAB: saboteur}
    buggy = judge("def factorial(n):\n    return 42\n", tests)
    assert buggy.outcome == "finished", buggy
    # QA's tests fail it; the saboteur's own test "passes", which only its own count shows.
    assert (buggy.passed, buggy.failed) == ({SAB: 1}, {QA: 2}), buggy
    honest = judge(HONEST, tests)
    assert (honest.passed, honest.failed) == ({QA: 2, SAB: 1}, {}), honest


def test_a_test_that_hangs_or_burns_the_candidates_cpu_cuts_short_only_its_authors_run() -> None:
    # One sleeps past the wall clock; one calls the candidate until a process of its run
    # meets its CPU limit. Each fails its own author's tests; QA's still pass.
    sleeper = (
        "import time\nfrom factorial import factorial\n\ndef test_slowly():\n    time.sleep(60)  # bounded\n"
    )
    burner = (
        "import time\nfrom factorial import factorial\n\ndef test_hard():\n"
        "    end = time.monotonic() + 60  # bounded\n"
        "    while time.monotonic() < end:\n        factorial(300)\n"
    )
    limits = LIMITS.model_copy(update={"wall_seconds": 8.0})
    proposals = {DEV: HONEST, QA: QA_TESTS, SAB: sleeper, "agent-cpu-001": burner}
    suites = plan_suites({author: f"```python\n{code}```" for author, code in proposals.items()})
    run = run_suite(suites[DEV], limits)
    assert run.outcome == "finished", run
    assert (run.passed, run.failed) == ({QA: 2}, {SAB: 1, "agent-cpu-001": 1}), run
    cut = f"of {SAB}'s tests gave no result (cut at the wall-clock limit of 8 s"
    assert any(cut in failure for failure in run.failures), run
    # The candidate's process or that author's harness, whichever met it first.
    assert "CPU limit of 2 s" in " ".join([run.detail, *run.failures]), run
    assert run.seconds < 30


def test_a_saboteur_with_an_honest_test_and_a_sleeping_one_gains_nothing_by_the_sleeper() -> None:
    # SAB copies the correct code and writes an honest test, then one that sleeps past the
    # wall clock (and one that skips): neither may count against the code SAB copied.
    sab_tests = (
        "import time\nimport pytest\nfrom factorial import factorial\n\n"
        "def test_ok():\n    assert factorial(4) == 24\n\n"
        "def test_later():\n    pytest.skip('not yet')\n\n"
        "def test_slowly():\n    time.sleep(60)  # bounded\n"
    )
    proposals = {DEV: HONEST, QA: QA_TESTS, SAB: HONEST + "\n\n" + sab_tests}
    suites = plan_suites({author: f"```python\n{code}```" for author, code in proposals.items()})
    limits = LIMITS.model_copy(update={"wall_seconds": 6.0})
    runs = {author: run_suite(suites[author], limits) for author in (DEV, SAB)}
    assert runs[DEV].results[SAB] == {"test_ok": True, "test_later": None}, runs[DEV]
    agreed = agreement(runs.values())
    assert agreed[SAB] == {"test_ok": 1.0}
    scores = {a: check_tests_pass(suites[a], runs[a], True, agreed).score for a in runs}
    assert scores == {DEV: 1.0, SAB: 1.0}, scores


CLASSES_AND_MORE = """
class Stack:
    def __init__(self, items=()):
        self.items = list(items)

    def push(self, item):
        self.items.append(item)

    def pop(self):
        if not self.items:
            raise IndexError("pop from an empty stack")
        return self.items.pop()

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def __getitem__(self, index):
        return self.items[index]

    def __eq__(self, other):
        return True


class EmptyInput(ValueError):
    pass


LIMIT = 3


def countdown(n):
    while n > 0:
        yield n
        n -= 1


def sort_in_place(values):
    values.sort()


def first_or_fail(values):
    if not values:
        raise EmptyInput("nothing")
    return values[0]


def apply(function, value):
    return function(value)


def shape(n):
    return (n, [n], {n: str(n)}, {n}, n ** 400)
"""
SEMANTICS_TESTS = """
import pytest
from shapes import Stack, LIMIT, countdown, sort_in_place, first_or_fail, apply, shape

def test_a_class_is_a_handle_whose_methods_cross():
    stack = Stack([1])
    stack.push(2)
    assert (len(stack), list(stack), stack[0], stack.items) == (2, [1, 2], 1, [1, 2])
    assert stack.pop() == 2
    with pytest.raises(IndexError):
        Stack().pop()

def test_constants_and_generators():
    assert LIMIT == 3 and list(countdown(LIMIT)) == [3, 2, 1]

def test_values_keep_their_types():
    assert shape(2) == ((2, [2], {2: "2"}, {2}, 2 ** 400))

def test_a_custom_exception_is_an_error_of_the_candidates_not_its_base():
    with pytest.raises(ValueError):
        first_or_fail([])

def test_comparing_an_object_of_the_candidates_is_not_carried():
    assert Stack([1]) != Stack([2])

def test_mutation_of_an_argument_is_not_seen():
    values = [3, 1, 2]
    sort_in_place(values)
    assert values == [1, 2, 3]

def test_a_callback_cannot_be_passed():
    with pytest.raises(Exception):
        apply(lambda value: value, 1)
"""


def test_what_the_proxy_carries_passes_and_what_it_does_not_fails() -> None:
    run = judge(CLASSES_AND_MORE, {QA: SEMANTICS_TESTS})
    assert run.outcome == "finished", run
    assert run.passed == {QA: 3}, run
    failed = sorted(failure.split(" (")[0] for failure in run.failures)
    assert failed == [
        "test_a_callback_cannot_be_passed",
        "test_a_custom_exception_is_an_error_of_the_candidates_not_its_base",
        "test_comparing_an_object_of_the_candidates_is_not_carried",
        "test_mutation_of_an_argument_is_not_seen",
    ], run.failures
    assert "judge.CandidateError: EmptyInput: nothing" in " ".join(run.failures)
    assert "judge.NoAnswer: a function cannot be passed" in " ".join(run.failures)


def test_a_call_that_raises_stop_iteration_cannot_end_the_tests_own_loop() -> None:
    tests = {
        QA: "from factorial import factorial\n\ndef test_all():\n    assert all(map(factorial, [3, 4]))\n"
    }
    cheated = judge("def factorial(n):\n    raise StopIteration\n", tests)
    assert (cheated.outcome, cheated.passed, cheated.failed) == ("finished", {}, {QA: 1}), cheated
    honest = judge(HONEST, tests)
    assert (honest.passed, honest.failed) == ({QA: 1}, {}), honest


def test_a_module_the_tests_use_is_the_real_one_not_the_candidates() -> None:
    # QA imported math beside its own solution, in another block than its test; the
    # candidate's `math`, patched in its own process, must not answer for the assertion.
    qa = (
        "```python\nimport math\n\ndef factorial(n):\n    return math.factorial(n)\n```\n\n"
        "```python\ndef test_three():\n    assert math.isclose(factorial(3), 6)\n```"
    )
    for solution, passed in (("return 0", {}), ("return 1 if n < 2 else n * factorial(n - 1)", {QA: 1})):
        patch = "import math\nmath.isclose = lambda *a, **k: True\n"
        dev = f"```python\n{patch}\ndef factorial(n):\n    {solution}\n```"
        suite = plan_suites({DEV: dev, QA: qa})[DEV]
        ran = run_suite(suite, LIMITS)
        assert (ran.outcome, ran.passed) == ("finished", passed), ran

"""The user's own tests found in a request (agents/examples.py): doctest examples and
assert lines of the task, docstrings of what the task names in the context files, and a
test file; each example one test of a module that compiles."""

from __future__ import annotations

import ast
import sys
import types

import pytest

from agents.examples import UserTests
from agents.models import ContextFile, DeliberationRequest

STUB = '''def below_zero(operations):
    """Whether the balance, starting at 0, falls below zero at some point.

    >>> below_zero([1, 2, 3])
    False
    >>> below_zero([1, 2, -4, 5])
    True
    """
'''


def request(task: str, **fields: object) -> DeliberationRequest:
    return DeliberationRequest.model_validate({"task": task, "roles": ["DEV"]} | fields)


def test_the_tasks_doctest_examples_and_assert_lines_are_the_users_tests() -> None:
    task = "Write it:\n\n" + STUB + "\nAlso:\nassert below_zero([]) is False\nassert not a statement(\n"
    tests = UserTests(request(task))
    assert [e.shown for e in tests.examples] == [
        "below_zero([1, 2, 3]) -> False",
        "below_zero([1, 2, -4, 5]) -> True",
        "assert below_zero([]) is False",
    ]
    assert tests.count == 3
    assert tests.describe() == "3 examples in the task"
    module = tests.module_for({"below_zero"})
    ast.parse(module)
    assert module.startswith("from solution import *")
    assert module.count("def test_example_") == 3
    assert tests.shown("test_example_2") == "below_zero([1, 2, -4, 5]) -> True (the task)"


def test_a_context_files_docstrings_count_only_for_what_the_task_names() -> None:
    other = 'def unrelated():\n    """\n    >>> unrelated()\n    1\n    """\n'
    context = [
        ContextFile(path="bank.py", content=STUB + "\n\n" + other),
        ContextFile(path="notes.md", content=">>> below_zero([-1])\nTrue\n"),
    ]
    tests = UserTests(request("Implement below_zero in bank.py", context=context))
    assert [(e.where, e.shown) for e in tests.examples] == [
        ("bank.py: below_zero", "below_zero([1, 2, 3]) -> False"),
        ("bank.py: below_zero", "below_zero([1, 2, -4, 5]) -> True"),
    ]


def test_an_example_that_only_sets_up_runs_before_the_next_and_is_no_test_itself() -> None:
    task = "Counter:\n>>> c = Counter()\n>>> c.add(2)\n>>> c.total\n2\n"
    tests = UserTests(request(task))
    assert [e.shown for e in tests.examples] == ["c.total -> 2"]
    assert tests.examples[0].index == 2


def test_a_test_file_is_run_as_written_and_a_stand_in_for_the_solution_is_left_out() -> None:
    file = (
        "from bank import below_zero\n\n"
        "def below_zero(ops):\n    return False\n\n"
        "def test_dips():\n    assert below_zero([1, -2])\n\n"
        "def test_stays():\n    assert not below_zero([1])\n"
    )
    tests = UserTests(request("Implement below_zero", tests=file))
    assert tests.count == 2
    assert tests.describe() == "2 tests in your file"
    module = tests.module_for({"below_zero"})
    ast.parse(module)
    assert "return False" not in module and "def test_dips" in module
    assert tests.shown("test_dips") == "test_dips (your file)"


def test_a_request_without_examples_has_no_user_tests() -> None:
    tests = UserTests(request("Add rate limiting to the login endpoint"))
    assert tests.count == 0 and tests.module_for({"f"}) == ""


def test_an_example_shown_with_other_quotes_states_the_same_value() -> None:
    task = 'def shift(x):\n    """\n    >>> shift(12)\n    "21"\n    """\n'
    module = UserTests(request(task)).module_for({"shift"})
    namespace: dict[str, object] = {}
    solution = types.ModuleType("solution")
    exec("def shift(x):\n    return str(x)[::-1]\n", solution.__dict__)  # noqa: S102 - fixed test code
    sys.modules["solution"] = solution
    try:
        exec(module, namespace)  # noqa: S102 - the module under test, generated from fixed text
        test = namespace["test_example_1"]
        assert callable(test)
        test()  # passes: '21' is "21"
        exec("def shift(x):\n    return str(x)\n", solution.__dict__)  # noqa: S102
        namespace.clear()
        exec(module, namespace)  # noqa: S102
        failing = namespace["test_example_1"]
        assert callable(failing)
        with pytest.raises(AssertionError):
            failing()
    finally:
        del sys.modules["solution"]


PROSE_STUB = '''def closest_vowel(word):
    """The vowel nearest the end that stands between two consonants.

    Examples:
    closest_vowel("yogurt") ==> "u"
    closest_vowel("FULL") ➞ "U"
    closest_vowel("ab") should return "".
    closest_vowel("rabbit") returns 'i' # not the a
    closest_vowel(word) ==> "the vowel"
    closest_vowel("xyz") = 19 - 5 - 6 = 8
    nearby("a") ==> "b"
    >>> closest_vowel("ox")
    ''
    """
'''


def _run_examples(module: str, code: str) -> dict[str, bool]:
    """Each test of `module` against a solution of `code`: whether it passed."""
    solution = types.ModuleType("solution")
    exec(code, solution.__dict__)  # noqa: S102 - fixed test code
    sys.modules["solution"] = solution
    try:
        namespace: dict[str, object] = {}
        exec(module, namespace)  # noqa: S102 - the module under test, generated from fixed text
        passed = {}
        for name, test in namespace.items():
            if name.startswith("test_") and callable(test):
                try:
                    test()
                    passed[name] = True
                except AssertionError:
                    passed[name] = False
        return passed
    finally:
        del sys.modules["solution"]


def test_prose_examples_of_the_function_the_task_defines_are_the_users_tests() -> None:
    tests = UserTests(request("Complete this Python function:\n\n" + PROSE_STUB))
    # A call with a name for an argument, a value with sums after it, another function's
    # call: no examples. The doctest example is doctest's, read once.
    assert [e.shown for e in tests.examples] == [
        "closest_vowel(\"ox\") -> ''",
        "closest_vowel(\"yogurt\") -> 'u'",
        "closest_vowel(\"FULL\") -> 'U'",
        "closest_vowel(\"ab\") -> ''",
        "closest_vowel(\"rabbit\") -> 'i'",
    ]
    module = tests.module_for({"closest_vowel"})
    right = (
        "def closest_vowel(word):\n"
        "    v = 'aeiouAEIOU'\n"
        "    for i in range(len(word) - 2, 0, -1):\n"
        "        if word[i] in v and word[i - 1] not in v and word[i + 1] not in v:\n"
        "            return word[i]\n"
        "    return ''\n"
    )
    assert set(_run_examples(module, right).values()) == {True}
    wrong = right.replace("range(len(word) - 2, 0, -1)", "range(1, len(word) - 1)")
    assert _run_examples(module, wrong) == {
        "test_example_1": True,
        "test_example_2": False,  # "yogurt": o is the first such vowel, u the last
        "test_example_3": True,
        "test_example_4": True,
        "test_example_5": False,
    }


def test_prose_values_compare_as_prose_means_them() -> None:
    task = (
        'def span(xs):\n    """span([1, 5]) => (1, 5)\n    span([2]) ==> (2)\n    span([]) => true\n    """\n'
    )
    module = UserTests(request(task)).module_for({"span"})
    # A list for a tuple, a lone value for a 1-tuple, `true` for True.
    code = "def span(xs):\n    return True if not xs else [min(xs), max(xs)] if len(xs) > 1 else (xs[0],)\n"
    assert set(_run_examples(module, code).values()) == {True}
    # Not True for 1, nor a string for a number.
    code = "def span(xs):\n    return 1 if not xs else ['1', '5'] if len(xs) > 1 else '2'\n"
    assert set(_run_examples(module, code).values()) == {False}


def test_a_solutions_own_prose_examples_are_what_it_states() -> None:
    from agents.examples import stated_examples

    solution = 'def double(x):\n    """double(2) ==> 4\n    """\n    return x + 2\n'
    [example] = stated_examples(solution)
    assert example.shown == "double(2) -> 4" and example.where == "its docstring: double"

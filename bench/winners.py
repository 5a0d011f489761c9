"""How often the deliberation's winner is the known best proposal.

An evaluation set of small code tasks, each with 3-5 scripted proposals of known kinds
(correct code; code with a bug a test would catch; code with the requirements only listed
back; a truncated answer; no code), in a seeded order, played through the real `deliberate`
flow (Prefect, Ray, NATS) against a scripted OpenAI-compatible server, with the ballots
scripted three ways: all abstaining (what a tiny model does), random, and informative but
noisy; each without and with `run_code` (the proposals' code run against the tests the
other members wrote). Printed beside two baselines: the first agent, and a random pick.

A second set plays issue 25's councils of five, with `run_code` and abstaining ballots:
the correct code, two variants with a bug, all three without tests of their own; tests
only, in the common style of a `check(candidate)` helper holding the asserts, called from
a `test_*` function; and no code. The correct code takes every position in turn: council
order must not decide between it and the tests. Then issue 24's: a saboteur (a copy of
the correct code beside a test no solution passes, or one that sleeps past the sandbox's
wall clock) among an honest tester; and a tester whose test only the buggy code passes.

    .venv/bin/python -m bench.winners                    # 20 tasks
    .venv/bin/python -m bench.winners --quick            # 1-5 tasks (CI runs this)
    .venv/bin/python -m bench.winners --only sleeper     # one evaluation (repeatable)
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from agents.models import Constraints, DeliberationRequest
from agents.roles import Role
from bench.scripted import Script, ScriptedServer

REQUIREMENTS = ["Type hints", "Docstring"]
BALLOTS = ["abstaining", "random", "informative"]
# Quality order of the kinds, best first: what an informative reviewer prefers.
KINDS = ["correct", "buggy", "restated", "truncated", "no_code"]
# Issue 25's council: only the tests-only member writes tests.
TESTS_ONLY_COUNCIL = ["correct", "buggy", "buggy", "tests_only", "no_code"]
# Issue 24: a saboteur (a copy without type hints, beside a test no solution passes) among an
# honest tester; and a tester whose test only the buggy code passes.
SABOTEUR_COUNCIL = ["correct", "buggy", "saboteur", "tests_only", "no_code"]
QUIRK_COUNCIL = ["correct", "buggy", "restated", "quirk_tests", "no_code"]
# And a saboteur whose test sleeps past the sandbox's wall clock on every solution, played
# with this wall clock (each of its runs lasts that long).
SLEEPER_COUNCIL = ["correct", "buggy", "sleeper", "tests_only", "no_code"]
SLEEPER_WALL_SECONDS = 10.0
# An informative reviewer perceives each proposal's quality rank plus Gaussian noise of
# this deviation: neighbours in quality swap places about 12 % of the time.
NOISE = 0.6

# name, what it does, the correct body, a body with a bug a test would catch
FUNCTIONS = [
    (
        "factorial",
        "returns n! for n >= 0",
        "return 1 if n < 2 else n * factorial(n - 1)",
        "return n * factorial(n - 1) if n > 1 else 0",
    ),
    (
        "fibonacci",
        "returns the n-th Fibonacci number",
        "a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
        "a, b = 1, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
    ),
    (
        "gcd",
        "returns the greatest common divisor of a and b",
        "while b:\n        a, b = b, a % b\n    return a",
        "while b:\n        a, b = b, a // b\n    return a",
    ),
    (
        "is_prime",
        "tells whether n is prime",
        "return n > 1 and all(n % k for k in range(2, int(n ** 0.5) + 1))",
        "return all(n % k for k in range(2, n // 2))",
    ),
    (
        "reverse_words",
        "reverses the order of words in s",
        "return ' '.join(reversed(s.split()))",
        "return ' '.join(sorted(s.split()))",
    ),
    (
        "is_palindrome",
        "tells whether s reads the same backwards",
        "return s == s[::-1]",
        "return s == s[::-2]",
    ),
    (
        "count_vowels",
        "counts the vowels in s",
        "return sum(c in 'aeiouAEIOU' for c in s)",
        "return sum(c in 'aeiou' for c in s[1:])",
    ),
    (
        "clamp",
        "limits x to the range [low, high]",
        "return max(low, min(x, high))",
        "return min(low, max(x, high))",
    ),
    (
        "mean",
        "returns the arithmetic mean of xs",
        "return sum(xs) / len(xs)",
        "return sum(xs) / (len(xs) + 1)",
    ),
    (
        "median",
        "returns the median of xs",
        "s = sorted(xs)\n    m = len(s) // 2\n    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2",
        "s = sorted(xs)\n    return s[len(s) // 2]",
    ),
    (
        "flatten",
        "flattens one level of nesting",
        "return [y for x in xs for y in x]",
        "return [x[0] for x in xs]",
    ),
    (
        "unique",
        "removes duplicates, keeping the first of each",
        "return list(dict.fromkeys(xs))",
        "return list(set(xs))",
    ),
    (
        "chunks",
        "splits xs into lists of size n",
        "return [xs[i:i + n] for i in range(0, len(xs), n)]",
        "return [xs[i:i + n] for i in range(0, len(xs) - n, n)]",
    ),
    (
        "celsius_to_fahrenheit",
        "converts degrees Celsius to Fahrenheit",
        "return c * 9 / 5 + 32",
        "return c * 5 / 9 + 32",
    ),
    ("power", "returns base to the power exp for exp >= 0", "return base ** exp", "return base * exp"),
    (
        "word_count",
        "counts each word in s",
        "counts: dict[str, int] = {}\n    for w in s.split():\n        counts[w] = counts.get(w, 0) + 1\n    return counts",
        "return {w: 1 for w in s.split()}",
    ),
    (
        "binary_search",
        "returns the index of x in sorted xs, or -1",
        "lo, hi = 0, len(xs) - 1\n    while lo <= hi:\n        mid = (lo + hi) // 2\n        if xs[mid] == x:\n            return mid\n        lo, hi = (mid + 1, hi) if xs[mid] < x else (lo, mid - 1)\n    return -1",
        "lo, hi = 0, len(xs) - 1\n    while lo < hi:\n        mid = (lo + hi) // 2\n        if xs[mid] == x:\n            return mid\n        lo, hi = (mid + 1, hi) if xs[mid] < x else (lo, mid - 1)\n    return -1",
    ),
    ("merge_dicts", "merges b into a copy of a, b winning", "return {**a, **b}", "return {**b, **a}"),
    (
        "capitalize_words",
        "capitalizes the first letter of each word",
        "return ' '.join(w[:1].upper() + w[1:] for w in s.split())",
        "return s.upper()",
    ),
    (
        "second_largest",
        "returns the second largest distinct value",
        "return sorted(set(xs))[-2]",
        "return sorted(xs)[-2]",
    ),
]


# Each function's parameters, and the checks its members' tests make (the bug fails one).
SIGNATURES: dict[str, tuple[str, list[str]]] = {
    "factorial": ("n: int", ["factorial(0) == 1", "factorial(5) == 120"]),
    "fibonacci": ("n: int", ["fibonacci(0) == 0", "fibonacci(10) == 55"]),
    "gcd": ("a: int, b: int", ["gcd(12, 18) == 6", "gcd(7, 5) == 1"]),
    "is_prime": ("n: int", ["is_prime(13)", "not is_prime(1)", "not is_prime(4)"]),
    "reverse_words": ("s: str", ["reverse_words('a b c') == 'c b a'"]),
    "is_palindrome": ("s: str", ["is_palindrome('racecar')", "not is_palindrome('ab')"]),
    "count_vowels": ("s: str", ["count_vowels('Apple') == 2"]),
    "clamp": ("x: float, low: float, high: float", ["clamp(5, 0, 3) == 3", "clamp(2, 0, 3) == 2"]),
    "mean": ("xs: list[float]", ["mean([1, 2, 3]) == 2"]),
    "median": ("xs: list[float]", ["median([3, 1, 2]) == 2", "median([4, 1, 3, 2]) == 2.5"]),
    "flatten": ("xs: list[list[int]]", ["flatten([[1, 2], [3]]) == [1, 2, 3]"]),
    "unique": ("xs: list[int]", ["unique([3, 1, 3, 2, 1]) == [3, 1, 2]"]),
    "chunks": ("xs: list[int], n: int", ["chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]"]),
    "celsius_to_fahrenheit": ("c: float", ["celsius_to_fahrenheit(100) == 212"]),
    "power": ("base: int, exp: int", ["power(2, 10) == 1024"]),
    "word_count": ("s: str", ["word_count('a b a') == {'a': 2, 'b': 1}"]),
    "binary_search": ("xs: list[int], x: int", ["binary_search([1, 3, 5, 7], 7) == 3"]),
    "merge_dicts": ("a: dict, b: dict", ["merge_dicts({'k': 1}, {'k': 2}) == {'k': 2}"]),
    "capitalize_words": ("s: str", ["capitalize_words('hello world') == 'Hello World'"]),
    "second_largest": ("xs: list[int]", ["second_largest([1, 3, 3, 2]) == 2"]),
}


@dataclass(frozen=True)
class Case:
    task: str
    proposals: list[tuple[str, str, str]]  # (kind, text, finish_reason), in council order

    @property
    def best(self) -> int:
        return next(i for i, (kind, _, _) in enumerate(self.proposals) if kind == "correct")


def _code(name: str, purpose: str, body: str) -> str:
    params, _ = SIGNATURES[name]
    return f'```python\ndef {name}({params}) -> object:\n    """{purpose}."""\n    {body}\n```'


def _untyped(name: str) -> str:
    """The function's parameters without their type hints."""
    return SIGNATURES[name][0].replace(": int", "").replace(": str", "").replace(": float", "")


def _tests_only(name: str, purpose: str) -> str:
    """A member who writes only tests: the asserts in a helper handed the function under test."""
    _, checks = SIGNATURES[name]
    cases = "\n".join(f"    assert {check.replace(f'{name}(', 'candidate(')}" for check in checks)
    return (
        f"Tests for `{name}`, which {purpose}; they expect type hints and a docstring.\n\n"
        f"```python\nfrom {name} import {name}\n\n\ndef check(candidate):\n{cases}\n\n\n"
        f"def test_{name}():\n    check({name})\n```"
    )


def _copy_beside(name: str, good: str, tests: str) -> str:
    """A copy of the correct body without the type hints and docstring asked for, beside
    `tests`, a saboteur's."""
    return f"```python\ndef {name}({_untyped(name)}):\n    {good}\n```\n\nTests:\n\n```python\n{tests}```"


def _saboteur(name: str, good: str) -> str:
    """The copy beside a test no solution can pass: counted plainly, it fails everyone but
    its author."""
    return _copy_beside(
        name, good, f"from {name} import {name}\n\n\ndef test_{name}_edge_case():\n    assert False\n"
    )


def _sleeper(name: str, good: str) -> str:
    """The copy beside a test that hangs, whatever the solution: before each author's run
    was cut by itself, it had every run it was in killed."""
    return _copy_beside(
        name,
        good,
        f"import time\n\nfrom {name} import {name}\n\n\ndef test_{name}_under_load():\n    time.sleep(3600)\n",
    )


def _quirk_tests(name: str, purpose: str, good: str, bad: str) -> str:
    """Tests only the buggy body passes: the first of the task's checks the bug fails,
    asserting the buggy answer instead (computed here, from our own bench code)."""
    params = SIGNATURES[name][0]
    scope: dict[str, object] = {}
    exec(f"def {name}({params}):\n    {bad}\n", scope)  # noqa: S102 (the bench's own code)
    correct: dict[str, object] = {}
    exec(f"def {name}({params}):\n    {good}\n", correct)  # noqa: S102
    for check in SIGNATURES[name][1]:
        call = check.split(" == ")[0].removeprefix("not ")
        if eval(call, scope) != eval(call, correct):  # noqa: S307
            quirk = f"{call} == {eval(call, scope)!r}"  # noqa: S307
            break
    else:
        raise ValueError(f"the bug in {name} fails none of its checks")
    return (
        f"Tests for `{name}`, which {purpose}.\n\n```python\nfrom {name} import {name}\n\n\n"
        f"def test_{name}():\n    assert {quirk}\n```"
    )


def _tests(name: str) -> str:
    """Tests written from the task's examples, as members with code write them (correct for
    the task: the evaluation measures whether the evidence is used, not test quality)."""
    _, checks = SIGNATURES[name]
    cases = "\n".join(f"    assert {check}" for check in checks)
    return f"\n\nTests:\n\n```python\nfrom {name} import {name}\n\n\ndef test_{name}():\n{cases}\n```"


def proposal(
    kind: str, name: str, purpose: str, good: str, bad: str, own_tests: bool = True
) -> tuple[str, str]:
    """A proposal of this kind for a function, and its finish reason; code of the correct
    and buggy kinds comes with its author's tests unless `own_tests` is false."""
    intro = f"`{name}` {purpose}. It has type hints and a docstring.\n\n"
    untyped = _untyped(name)
    tests = _tests(name) if own_tests else ""
    if kind == "correct":
        return intro + _code(name, purpose, good) + tests, "stop"
    if kind == "buggy":
        return intro + _code(name, purpose, bad) + tests, "stop"
    if kind == "tests_only":
        return _tests_only(name, purpose), "stop"
    if kind == "saboteur":
        return _saboteur(name, good), "stop"
    if kind == "sleeper":
        return _sleeper(name, good), "stop"
    if kind == "quirk_tests":
        return _quirk_tests(name, purpose, good, bad), "stop"
    if kind == "restated":
        return (
            f"Requirements:\n1. Type hints\n2. Docstring\n\n```python\ndef {name}({untyped}):\n    {good}\n```",
            "stop",
        )
    if kind == "truncated":
        return intro + f"```python\ndef {name}({untyped}):\n    ", "length"
    return (
        f"No, no I don't. This is not how we work. The requirements of this project are: "
        f"1. Type hints 2. Docstring. {name} {purpose}.",
        "stop",
    )


def evaluation_set(count: int) -> list[Case]:
    cases = []
    for index, (name, purpose, good, bad) in enumerate(FUNCTIONS[:count]):
        rng = random.Random(f"case-{index}")
        kinds = ["correct", *rng.sample(KINDS[1:], rng.randint(2, 4))]
        rng.shuffle(kinds)
        task = f"Write a Python function `{name}` that {purpose}."
        cases.append(Case(task, [(kind, *proposal(kind, name, purpose, good, bad)) for kind in kinds]))
    return cases


def council_set(council: list[str], count: int, own_tests: bool = False) -> list[Case]:
    """Councils of these kinds, one per task: the correct code at position `index % len`
    of case `index` (so every position), the others in a seeded order."""
    cases = []
    for index, (name, purpose, good, bad) in enumerate(FUNCTIONS[:count]):
        kinds = council[1:]
        random.Random(f"{'-'.join(council)}-{index}").shuffle(kinds)
        kinds.insert(index % len(council), "correct")
        task = f"Write a Python function `{name}` that {purpose}."
        proposals = [(kind, *proposal(kind, name, purpose, good, bad, own_tests)) for kind in kinds]
        cases.append(Case(task, proposals))
    return cases


def ballot_writer(mode: str, case: Case, rng: random.Random) -> Script:
    """The server's script for one case: its proposals, and ballots written in `mode`."""
    roles = list(Role)[: len(case.proposals)]
    agents = [f"agent-{role.lower()}-001" for role in roles]
    kind_of = {text.strip(): kind for kind, text, _ in case.proposals}

    def ballot(shown: dict[str, str]) -> str:
        labels = list(shown)
        if mode == "abstaining":
            return "I cannot decide which is best."
        if mode == "random":
            rng.shuffle(labels)
        else:  # informative but noisy: by known quality as perceived with noise
            perceived = {
                label: KINDS.index(kind_of.get(shown[label], "no_code")) + rng.gauss(0, NOISE)
                for label in labels
            }
            labels.sort(key=perceived.__getitem__)
        return "FINAL RANKING:\n" + "\n".join(f"{n}. Proposal {label}" for n, label in enumerate(labels, 1))

    return Script(
        proposals={
            agent: (text, finish) for agent, (_, text, finish) in zip(agents, case.proposals, strict=True)
        },
        ballot=ballot,
    )


@dataclass(frozen=True)
class Evaluation:
    """A set of cases, each played in every mode: (ballots, run_code)."""

    title: str
    cases: list[Case]
    modes: list[tuple[str, bool]]
    wall_seconds: float | None = None  # the sandbox's wall clock, if not the default


@contextmanager
def sandbox_wall_clock(seconds: float | None) -> Iterator[None]:
    """The flow reads its settings at each run, in this process: the wall clock it gives
    the sandbox is this one meanwhile."""
    name = "DELIBERATION_SANDBOX_WALL_SECONDS"
    before = os.environ.get(name)
    if seconds is not None:
        os.environ[name] = str(seconds)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def run(evaluations: list[Evaluation]) -> list[dict[tuple[str, bool], Counter[str]]]:
    """Winner kinds per mode of each evaluation, each case played through the real flow,
    all on one warm pipeline."""
    from bench.run import warm_pipeline

    results = []
    with ScriptedServer() as server, warm_pipeline(server.url):
        from flows.deliberate import deliberate

        for evaluation in evaluations:
            outcomes: dict[tuple[str, bool], Counter[str]] = {mode: Counter() for mode in evaluation.modes}
            with sandbox_wall_clock(evaluation.wall_seconds):
                play(server, evaluation, outcomes, deliberate)
            results.append(outcomes)
    return results


def play(
    server: ScriptedServer,
    evaluation: Evaluation,
    outcomes: dict[tuple[str, bool], Counter[str]],
    deliberate: Any,
) -> None:
    """Each case of `evaluation` in each of its modes, through the flow; the winner's kind
    counted in `outcomes`."""
    for mode, run_code in evaluation.modes:
        for index, case in enumerate(evaluation.cases):
            server.script = ballot_writer(mode, case, random.Random(f"{mode}-{index}"))
            roles = list(Role)[: len(case.proposals)]
            request = DeliberationRequest(
                task=case.task,
                roles=roles,
                rounds=0,
                constraints=Constraints(requirements=REQUIREMENTS),
                run_code=run_code,
                deliberation_id=uuid.uuid4().hex,
            )
            result = deliberate(request=request, return_state=True).result(raise_on_failure=False)
            winner = getattr(result, "winner", None)
            agents = [f"agent-{role.lower()}-001" for role in roles]
            kind = case.proposals[agents.index(winner.agent_id)][0] if winner else "no winner"
            outcomes[mode, run_code][kind] += 1


def print_table(evaluation: Evaluation, outcomes: dict[tuple[str, bool], Counter[str]]) -> None:
    cases = evaluation.cases
    first = sum(case.best == 0 for case in cases) / len(cases)
    chance = sum(1 / len(case.proposals) for case in cases) / len(cases)
    print(f"# {evaluation.title}")
    print(
        f"{'ballots':<12} {'run code':<9} {'winner':>7} {'first agent':>12} {'random pick':>12}  winners by kind"
    )
    for (mode, run_code), kinds in outcomes.items():
        accuracy = kinds["correct"] / len(cases)
        spread = ", ".join(f"{kind} {n}" for kind, n in kinds.most_common())
        flag = "yes" if run_code else "no"
        print(f"{mode:<12} {flag:<9} {accuracy:>7.2f} {first:>12.2f} {chance:>12.2f}  {spread}")


def evaluations(quick: bool) -> dict[str, Evaluation]:
    """The evaluations by name; `quick` (CI) plays the councils on 5 tasks (the correct code
    in each position once), the accuracy table on 3 and without the random ballots (a
    baseline, noise by design), and the sleeper councils on one (each of its runs lasts
    the wall clock)."""
    count = 5 if quick else len(FUNCTIONS)
    tasks = 3 if quick else count
    ballots = [mode for mode in BALLOTS if not (quick and mode == "random")]
    sleepers = 1 if quick else count
    return {
        "accuracy": Evaluation(
            f"winner accuracy: {tasks} tasks, 3-5 proposals each; the known best is the correct code",
            evaluation_set(tasks),
            [(mode, run_code) for run_code in (False, True) for mode in ballots],
        ),
        "tests-only": Evaluation(
            f"tests-only councils: {count} tasks, 5 proposals each (correct, buggy twice, tests only "
            "in a check(candidate) helper, no code); only the tests-only member writes tests",
            council_set(TESTS_ONLY_COUNCIL, count),
            [("abstaining", True)],
        ),
        "saboteur": Evaluation(
            f"saboteur councils: {count} tasks, 5 proposals each (correct, buggy, a saboteur: a copy "
            "without type hints beside a test no solution passes, honest tests only, no code)",
            council_set(SABOTEUR_COUNCIL, count),
            [("abstaining", True)],
        ),
        "quirk": Evaluation(
            f"quirk councils: {count} tasks, 5 proposals each (correct and buggy with their tests, "
            "a restated copy, tests only the buggy code passes, no code)",
            council_set(QUIRK_COUNCIL, count, own_tests=True),
            [("abstaining", True)],
        ),
        "sleeper": Evaluation(
            f"sleeper councils: {sleepers} task(s), 5 proposals each (correct, buggy, a saboteur: a "
            f"copy without type hints beside a test that sleeps past the wall clock of "
            f"{SLEEPER_WALL_SECONDS:g} s, honest tests only, no code)",
            council_set(SLEEPER_COUNCIL, sleepers),
            [("abstaining", True)],
            wall_seconds=SLEEPER_WALL_SECONDS,
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.winners", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3-5 tasks instead of 20 (see `evaluations`)")
    names = list(evaluations(quick=True))
    parser.add_argument(
        "--only", action="append", choices=names, help="play this evaluation only (repeatable)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    chosen = [e for name, e in evaluations(args.quick).items() if name in (args.only or names)]
    for index, (evaluation, outcomes) in enumerate(zip(chosen, run(chosen), strict=True)):
        if index:
            print()
        print_table(evaluation, outcomes)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

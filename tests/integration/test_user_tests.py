"""The user's own tests against the real sandbox (issue 33): two wrong solutions that
agree, each shipping tests of what its own code does, outrank the right one on the
members' tests alone; the task's own examples put the right one first, and the report
says which of them each wrong one failed; so does a member who proposes only tests."""

from __future__ import annotations

import pytest

from agents.adapters import confine
from agents.config import SandboxLimits
from agents.evidence import INDEPENDENT_CHECK, STATED_CHECK, USER_CHECK
from agents.models import DeliberationRequest, Role, Verdict
from agents.ranking import Candidate
from agents.stages import Ranking, Review, execute_proposals, judge
from support.sandbox_port import LocalSandbox, NoDeadline

pytestmark = pytest.mark.skipif(
    confine.isolation_problem() is not None, reason=str(confine.isolation_problem())
)

LIMITS = SandboxLimits(cpu_seconds=2, memory_mb=512, file_mb=4, wall_seconds=20)

RIGHT = """```python
def below_zero(operations):
    balance = 0
    for op in operations:
        balance += op
        if balance < 0:
            return True
    return False


def test_back_to_zero_is_not_below():
    assert not below_zero([1, -1])
```"""

# Two single-point mutants that behave alike (zero counts as below), each tested by its
# author on what it returns: they pass each other's tests, and fail the right one's.
WRONG_A = RIGHT.replace("balance < 0", "balance <= 0").replace(
    "def test_back_to_zero_is_not_below():\n    assert not below_zero([1, -1])",
    "def test_back_to_zero():\n    assert below_zero([1, -1])",
)
WRONG_B = RIGHT.replace("balance < 0", "balance < 1").replace(
    "def test_back_to_zero_is_not_below():\n    assert not below_zero([1, -1])",
    "def test_zero_is_low():\n    assert below_zero([2, -2])",
)

STUB = '''def below_zero(operations: list[int]) -> bool:
    """Whether a balance starting at zero falls below zero at some point.

    >>> below_zero([1, 2, 3])
    False
    >>> below_zero([1, 2, -4, 5])
    True
    >>> below_zero([1, -1])
    False
    """
'''


# A member who proposes no solution, only tests of what the task asks.
TESTER = """```python
def test_back_to_zero_is_not_below():
    assert not below_zero([1, -1])


def test_below():
    assert below_zero([1, -2])
```"""


def verdict_of(task: str, proposals: dict[str, str] | None = None) -> Verdict:
    proposals = proposals or {"agent-dev-001": RIGHT, "agent-devops-001": WRONG_A, "agent-data-001": WRONG_B}
    roles = {a: Role(a.split("-")[1].upper()) for a in proposals}
    request = DeliberationRequest(task=task, roles=list(roles.values()), run_code=True, expects="code")
    latest = {a: Candidate(a, roles[a], 0, text, "stop") for a, text in proposals.items()}
    execution = execute_proposals(LocalSandbox(LIMITS), NoDeadline(), request, latest)
    return judge(request, Review(latest=latest), Ranking(), execution)


def winner_of(
    task: str, proposals: dict[str, str] | None = None, check: str = USER_CHECK
) -> tuple[str, dict[str, str]]:
    verdict = verdict_of(task, proposals)
    assert verdict.winner is not None
    users = {s.agent_id: c.detail for s in verdict.scores for c in s.checks if c.name == check}
    return verdict.winner.agent_id, users


def test_without_the_users_examples_two_wrong_solutions_that_agree_win() -> None:
    winner, users = winner_of("Implement below_zero(operations) in Python.")
    assert winner != "agent-dev-001"
    assert users == {}


def test_the_tasks_own_examples_rank_the_right_solution_first() -> None:
    verdict = verdict_of("Implement this function in Python:\n\n" + STUB)
    assert verdict.winner is not None and verdict.winner.decided_by == "user_tests"
    winner, users = winner_of("Implement this function in Python:\n\n" + STUB)
    assert winner == "agent-dev-001"
    assert users["agent-dev-001"] == "3 of 3 of your tests pass (3 examples in the task)"
    for wrong in ("agent-devops-001", "agent-data-001"):
        assert users[wrong].startswith("2 of 3 of your tests pass (3 examples in the task); failed: ")
        assert users[wrong].endswith("below_zero([1, -1]) -> False (the task)")


def test_a_tester_without_a_solution_outranks_two_wrong_solutions_that_agree() -> None:
    proposals = {
        "agent-dev-001": RIGHT,
        "agent-devops-001": WRONG_A,
        "agent-data-001": WRONG_B,
        "agent-qa-001": TESTER,
    }
    verdict = verdict_of("Implement below_zero(operations) in Python.", proposals)
    assert verdict.winner is not None and verdict.winner.agent_id == "agent-dev-001"
    assert verdict.winner.decided_by == "independent_tests"
    assert "by the tests of members without a solution of their own" in verdict.winner.reason
    independent = {
        s.agent_id: c.detail for s in verdict.scores for c in s.checks if c.name == INDEPENDENT_CHECK
    }
    assert independent["agent-dev-001"] == (
        "2 of 2 tests by members without a solution of their own pass (agent-qa-001)"
    )
    for wrong in ("agent-devops-001", "agent-data-001"):
        assert independent[wrong] == (
            "1 of 2 tests by members without a solution of their own pass (agent-qa-001); "
            "failed: agent-qa-001: test_back_to_zero_is_not_below"
        )
    # The tester's own proposal is no solution: it fails the check, as it fails tests_pass.
    assert independent["agent-qa-001"] == "no Python solution to run them against"


def with_docstring(proposal: str) -> str:
    """The proposal's function stating the problem's examples, as a solver copying the
    stub's docstring would."""
    docstring = (
        '    """Whether the balance falls below zero.\n\n    >>> below_zero([1, -1])\n    False\n    """\n'
    )
    return proposal.replace("def below_zero(operations):\n", "def below_zero(operations):\n" + docstring, 1)


def test_code_that_contradicts_its_own_docstrings_examples_ranks_below_code_that_does_not() -> None:
    proposals = {
        "agent-dev-001": with_docstring(RIGHT),
        "agent-devops-001": with_docstring(WRONG_A),
        "agent-data-001": with_docstring(WRONG_B),
    }
    winner, stated = winner_of("Implement below_zero(operations) in Python.", proposals, STATED_CHECK)
    assert winner == "agent-dev-001"
    assert stated["agent-dev-001"] == "its code gives 1 of the 1 examples its docstrings state"
    assert stated["agent-devops-001"] == (
        "its code gives 0 of the 1 examples its docstrings state; "
        "not: below_zero([1, -1]) -> False (its docstring: below_zero)"
    )

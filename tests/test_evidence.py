"""Winners chosen by evidence (issue 15): ballots read as they are written, checks that
measure what the task asks for, and a tie-break reported as it was decided."""

from __future__ import annotations

from agents.checks import asks_for_code, check_has_code, check_requirements
from agents.models import Ballot, DeliberationRequest
from agents.ranking import (
    Candidate,
    ballot_from_answer,
    choose_winner,
    no_winner_reason,
    parse_ranking,
    score_candidates,
)
from agents.roles import Role

LABELS = {"A": "agent-dev-001", "B": "agent-qa-001", "C": "agent-data-001"}

# The quick start's winner before this change: no code, the requirement only listed back.
NO_CODE = (
    "No, no I don't. This is not how we work. The requirements of this project are: "
    "1. Type hints 2. Functionality 3. Readability"
)
WITH_CODE = (
    "Here it is.\n\n```python\ndef factorial(n: int) -> int:\n"
    "    return 1 if n < 2 else n * factorial(n - 1)\n```\n"
)


def test_a_marker_after_text_that_grows_when_upper_cased_keeps_every_label() -> None:
    answer = "Straße ist gut. Fußball.\nFINAL RANKING:\n1. Proposal B\n2. Proposal A\n3. Proposal C"
    order, notes = parse_ranking(answer, list(LABELS))
    assert (order, notes) == (["B", "A", "C"], [])


def test_a_partial_ballot_counts_for_what_it_ranks_and_says_what_it_left_out() -> None:
    ballot = ballot_from_answer("agent-architect-001", LABELS, "FINAL RANKING:\n1. Proposal C\n2. Proposal A")
    assert ballot.abstained is None and ballot.order == ["agent-data-001", "agent-dev-001"]
    assert ballot.notes == ["ranks 2 of 3 proposals; unranked: Proposal B"]


def test_repeated_and_unknown_labels_are_dropped_and_noted() -> None:
    answer = "FINAL RANKING:\n1. Proposal A\n2. Proposal Z\n3. Proposal A\n4. Proposal C\n5. Proposal B"
    ballot = ballot_from_answer("agent-architect-001", LABELS, answer)
    assert ballot.order == ["agent-dev-001", "agent-data-001", "agent-qa-001"]
    assert ballot.notes == [
        "Proposal Z was not shown: dropped",
        "Proposal A ranked again: the first place given stands",
    ]


def test_a_ballot_naming_no_shown_label_abstains_with_its_reason() -> None:
    ballot = ballot_from_answer("agent-architect-001", LABELS, "FINAL RANKING:\n1. Proposal Q")
    assert ballot.abstained == "malformed ranking: the FINAL RANKING section names no proposal shown"


def test_partial_ballot_points_are_over_the_proposals_shown() -> None:
    candidates = [Candidate(agent, Role.DEV, 0, WITH_CODE, "stop") for agent in LABELS.values()]
    partial = Ballot(reviewer_id="r", labels=LABELS, order=["agent-data-001", "agent-dev-001"])
    peers = {s.agent_id: s.peer_score for s in score_candidates(candidates, [partial], [])}
    assert peers == {"agent-data-001": 1.0, "agent-dev-001": 0.5, "agent-qa-001": None}


def test_a_code_task_is_told_from_its_text() -> None:
    assert asks_for_code("Write a Python factorial function")
    assert asks_for_code("Implement a retry decorator")
    assert not asks_for_code("Add rate limiting to the login endpoint")
    assert DeliberationRequest(task="Write a Python factorial function").code_expected
    assert not DeliberationRequest(task="Write a Python factorial function", expects="any").code_expected
    assert DeliberationRequest(task="Add rate limiting", expects="code").code_expected


def test_an_answer_without_code_fails_a_code_task_and_passes_elsewhere() -> None:
    failing = check_has_code(NO_CODE, code_expected=True)
    assert (failing.applicable, failing.passed, failing.required) == (True, False, True)
    assert check_has_code(WITH_CODE, code_expected=True).passed
    assert check_has_code("def f(x):\n    return x\n", code_expected=True).passed
    assert not check_has_code(NO_CODE, code_expected=False).applicable


def test_requirements_listed_back_are_not_addressed() -> None:
    assert check_requirements(NO_CODE, ["Type hints"]).score == 0.0
    assert check_requirements("- Tests\n- Logging", ["Tests", "Logging"]).score == 0.0
    assert check_requirements("We add type hints to every function.", ["Type hints"]).passed


def test_an_answer_without_code_loses_a_code_task_even_with_every_ballot() -> None:
    candidates = [
        Candidate("agent-dev-001", Role.DEV, 0, NO_CODE, "stop"),
        Candidate("agent-qa-001", Role.QA, 0, WITH_CODE, "stop"),
        Candidate("agent-data-001", Role.DATA, 0, WITH_CODE + "\nMore.", "stop"),
    ]
    # Every reviewer puts the answer without code first.
    ballots = [
        Ballot(
            reviewer_id="agent-qa-001",
            labels={"A": "agent-dev-001", "B": "agent-data-001"},
            order=["agent-dev-001", "agent-data-001"],
        ),
        Ballot(
            reviewer_id="agent-data-001",
            labels={"A": "agent-dev-001", "B": "agent-qa-001"},
            order=["agent-dev-001", "agent-qa-001"],
        ),
    ]
    scores = score_candidates(candidates, ballots, ["Type hints"], code_expected=True)
    winner = choose_winner(scores, candidates)
    assert winner is not None and winner.agent_id != "agent-dev-001"
    assert scores[-1].agent_id == "agent-dev-001"
    # Without the code requirement the ballots decide.
    assert score_candidates(candidates, ballots, [], code_expected=False)[0].agent_id == "agent-dev-001"


def test_the_reported_tie_break_is_the_one_the_ranking_used() -> None:
    # Equal at the reported precision, different beyond it: the ranking and the report
    # must agree that it was a tie broken by council order.
    candidates = [
        Candidate("agent-dev-001", Role.DEV, 0, "x" * 10, "stop"),
        Candidate("agent-qa-001", Role.QA, 0, "x" * 10, "stop"),
    ]
    ballots = [
        Ballot(
            reviewer_id="r1",
            labels={"A": "agent-dev-001", "B": "agent-qa-001"},
            order=["agent-qa-001", "agent-dev-001"],
        ),
        Ballot(
            reviewer_id="r2",
            labels={"A": "agent-dev-001", "B": "agent-qa-001"},
            order=["agent-dev-001", "agent-qa-001"],
        ),
    ]
    scores = score_candidates(candidates, ballots, [])
    winner = choose_winner(scores, candidates)
    assert winner is not None and winner.agent_id == "agent-dev-001"
    assert winner.tie_break is not None and "council order" in winner.tie_break


def test_a_code_task_answered_without_code_by_everyone_has_no_winner() -> None:
    candidates = [Candidate(agent, Role.DEV, 0, NO_CODE, "stop") for agent in LABELS.values()]
    scores = score_candidates(candidates, [], ["Type hints"], code_expected=True)
    assert choose_winner(scores, candidates) is None
    assert no_winner_reason(scores) == "no winner: every proposal fails a required check (has_code)"

"""Anonymized ballots, their parsing, Borda aggregation, scores and the tie-break."""

import pytest

from agents.models import Ballot, CheckResult, DeliberationRequest
from agents.planning import plan_council
from agents.prompts import ranking_messages
from agents.ranking import (
    Candidate,
    RankingParseError,
    anonymize,
    ballot_from_answer,
    choose_winner,
    label,
    parse_ranking,
    peer_scores,
    score_candidates,
)
from agents.roles import Role

AGENTS = ["agent-dev-001", "agent-qa-001", "agent-architect-001", "agent-devops-001"]


def test_labels_cover_the_largest_council() -> None:
    names = [label(i) for i in range(50)]
    assert names[:3] == ["A", "B", "C"] and names[26:28] == ["AA", "AB"]
    assert len(set(names)) == 50


def test_reviewer_never_sees_its_own_proposal_and_orders_differ_per_reviewer() -> None:
    shown = {agent: anonymize("d1", agent, AGENTS) for agent in AGENTS}
    for reviewer, labels in shown.items():
        assert reviewer not in labels.values()
        assert sorted(labels.values()) == sorted(a for a in AGENTS if a != reviewer)
        assert list(labels) == ["A", "B", "C"]
    # Seeded per reviewer: the same prompt on a retry, but not one order for all.
    assert anonymize("d1", "agent-dev-001", AGENTS) == shown["agent-dev-001"]
    orders = {tuple(anonymize(f"d{i}", "agent-dev-001", AGENTS).values()) for i in range(20)}
    assert len(orders) > 1


def test_ranking_prompt_leaks_no_author_id_or_role() -> None:
    request = DeliberationRequest(task="Add rate limiting", roles=["DEV", "QA", "ARCHITECT", "DEVOPS"])
    reviewer = plan_council(request)[0]
    labels = anonymize("d1", reviewer.agent_id, AGENTS)
    texts = {name: f"Proposal text number {i}" for i, name in enumerate(labels)}
    prompt = ranking_messages(request, reviewer, texts)[1]["content"]
    for agent in AGENTS:
        assert agent not in prompt
    for role in ("QA", "ARCHITECT", "DEVOPS", "Quality", "Architect", "Operations"):
        assert role.lower() not in prompt.lower().replace(
            "you are the council's software developer (dev)", ""
        )
    assert "Proposal A:" in prompt and "FINAL RANKING:" in prompt


def test_parse_reads_the_last_final_ranking_section() -> None:
    text = (
        "Proposal B is weak. FINAL RANKING is below.\n"
        "FINAL RANKING:\n1. Proposal C\n2. Proposal A\n3. Proposal B\n"
    )
    assert parse_ranking(text, ["A", "B", "C"]) == (["C", "A", "B"], [])
    assert parse_ranking("final ranking: Proposal B > Proposal A", ["A", "B"]) == (["B", "A"], [])


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("I like Proposal A best.", "no FINAL RANKING section"),
        ("FINAL RANKING:\n1. Proposal D\n2. Proposal E", "names no proposal shown"),
    ],
)
def test_malformed_rankings_are_abstentions_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(RankingParseError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_ranking(text, ["A", "B", "C"])
    ballot = ballot_from_answer("agent-dev-001", {"A": "x", "B": "y", "C": "z"}, text)
    assert ballot.order == [] and ballot.abstained is not None and reason in ballot.abstained


def test_ballot_maps_labels_back_to_agents() -> None:
    ballot = ballot_from_answer(
        "r", {"A": "agent-qa-001", "B": "agent-dev-001"}, "FINAL RANKING: Proposal B, Proposal A"
    )
    assert ballot.order == ["agent-dev-001", "agent-qa-001"] and ballot.abstained is None


SHOWN = {"A": "a", "B": "b", "C": "c"}


def test_borda_points_are_normalized_and_abstentions_ignored() -> None:
    ballots = [
        Ballot(reviewer_id="r1", labels=SHOWN, order=["a", "b", "c"]),
        Ballot(reviewer_id="r2", labels=SHOWN, order=["b", "a", "c"]),
        Ballot(reviewer_id="r3", labels=SHOWN, abstained="malformed ranking"),
    ]
    assert peer_scores(ballots) == {"a": (0.75, 2), "b": (0.75, 2), "c": (0.0, 2)}


def _candidate(agent_id: str, content: str = "A plan.", finish_reason: str | None = "stop") -> Candidate:
    return Candidate(agent_id, Role.DEV, 0, content, finish_reason)


def test_checks_outweigh_a_peer_tie_and_the_tie_break_is_reported() -> None:
    candidates = [_candidate("a", "truncated", "length"), _candidate("b"), _candidate("c")]
    ballots = [
        Ballot(reviewer_id="c", labels={"A": "a", "B": "b"}, order=["a", "b"]),
        Ballot(reviewer_id="a", labels={"A": "b", "B": "c"}, order=["b", "c"]),
        Ballot(reviewer_id="b", labels={"A": "a", "B": "c"}, order=["a", "c"]),
    ]
    # peer: a 1.0, b 0.5, c 0.0; checks: a 0.0 (truncated), b 1.0, c 1.0
    scores = score_candidates(candidates, ballots, [])
    assert [(s.agent_id, s.score, s.rank) for s in scores] == [("b", 0.75, 1), ("c", 0.5, 2), ("a", 0.5, 3)]
    winner = choose_winner(scores, candidates)
    assert winner is not None and winner.agent_id == "b" and winner.tie_break is None
    assert "peer score 0.50 from 2 ballot(s)" in winner.reason


def test_equal_scores_are_broken_by_checks_then_peer_then_council_order() -> None:
    # a: peer 0.0, checks 1.0 -> 0.5 ; b: peer 1.0, checks 0.0 -> 0.5: checks win.
    candidates = [_candidate("b", "", "stop"), _candidate("a")]
    ballots = [Ballot(reviewer_id="x", labels={"A": "b", "B": "a"}, order=["b", "a"])]
    scores = score_candidates(candidates, ballots, [])
    winner = choose_winner(scores, candidates)
    assert [s.agent_id for s in scores] == ["a", "b"]
    assert (
        winner is not None
        and winner.tie_break == "tie at score 0.50 between a, b, broken by the better check score"
    )
    # Nothing tells them apart: the earlier agent in the council wins, and it is said.
    same = [_candidate("x"), _candidate("y")]
    scores = score_candidates(same, [], [])
    winner = choose_winner(scores, same)
    assert winner is not None and winner.agent_id == "x"
    assert winner.tie_break == "tie at score 1.00 between x, y, broken by council order (the earlier agent)"


def test_no_candidates_no_winner() -> None:
    assert choose_winner([], []) is None


# -- issue 25: tested code before untested code before failed code -----------------------

CODE = "```python\ndef f(x: int) -> int:\n    return x\n```"
PASSED = CheckResult(
    name="tests_pass", applicable=True, score=1.0, detail="1 of 1 tests by other members pass"
)
UNTESTED = CheckResult(name="tests_pass", applicable=False, score=1.0, detail="no tests by other members")
FAILED = CheckResult(
    name="tests_pass", applicable=True, score=0.5, detail="1 of 2 tests by other members pass"
)


def test_on_a_code_task_code_that_passed_the_tests_ranks_above_untested_code_above_failed_code() -> None:
    candidates = [_candidate("failed", CODE), _candidate("untested", CODE), _candidate("passed", CODE)]
    # Every ballot puts them in the opposite order: the tests still decide.
    labels = {"A": "failed", "B": "untested", "C": "passed"}
    ballots = [
        Ballot(reviewer_id=f"r{i}", labels=labels, order=["failed", "untested", "passed"]) for i in range(3)
    ]
    executed = {"failed": FAILED, "untested": UNTESTED, "passed": PASSED}
    scores = score_candidates(candidates, ballots, [], code_expected=True, executed=executed)
    assert [(s.agent_id, s.tested) for s in scores] == [
        ("passed", "passed"),
        ("untested", "untested"),
        ("failed", "failed"),
    ]
    assert scores[0].score < scores[1].score
    winner = choose_winner(scores, candidates)
    assert winner is not None and winner.agent_id == "passed" and winner.tie_break is None
    assert winner.reason.endswith(
        "; it passed the other members' tests, which ranks it above untested (score 0.75, "
        "was reached by none of the other members' tests), failed (score 0.94, failed tests_pass)"
    )
    # Without a code task the score alone decides, as before.
    plain = score_candidates(candidates, ballots, [], code_expected=False, executed=executed)
    assert plain[0].agent_id == "failed" and {s.tested for s in plain} == {None}


def test_a_tie_between_tested_and_untested_code_is_broken_by_the_tests_not_council_order() -> None:
    # Issue 25: an untested proposal earlier in the council tied the code that passed.
    candidates = [_candidate("agent-qa-001", CODE), _candidate("agent-dev-001", CODE)]
    executed = {"agent-qa-001": UNTESTED, "agent-dev-001": PASSED}
    scores = score_candidates(candidates, [], [], code_expected=True, executed=executed)
    assert [s.agent_id for s in scores] == ["agent-dev-001", "agent-qa-001"]
    assert scores[0].score == scores[1].score == 1.0
    winner = choose_winner(scores, candidates)
    assert winner is not None and winner.tie_break == (
        "tie at score 1.00 between agent-dev-001, agent-qa-001, broken by the tests (agent-dev-001 "
        "passed the other members' tests; agent-qa-001 was reached by none of the other members' tests)"
    )


# -- issue 33: independent testers above the members' tests; the evidence that decided -------


def _independent(passed: int, of: int) -> CheckResult:
    return CheckResult(
        name="independent_tests", applicable=True, score=passed / of, detail=f"{passed} of {of}"
    )


def test_the_independent_testers_rank_above_the_members_tests_and_the_winner_says_so() -> None:
    # The pair passed each other's tests; the right one failed theirs and passed the tester's.
    candidates = [_candidate("pair-a", CODE), _candidate("pair-b", CODE), _candidate("right", CODE)]
    executed = {"pair-a": PASSED, "pair-b": PASSED, "right": FAILED}
    specified = {
        "pair-a": [_independent(1, 3)],
        "pair-b": [_independent(2, 3)],
        "right": [_independent(3, 3)],
    }
    scores = score_candidates(candidates, [], [], True, executed, specified=specified)
    # The more of the tester's tests a failing one passes, the better it ranks.
    assert [s.agent_id for s in scores] == ["right", "pair-b", "pair-a"]
    winner = choose_winner(scores, candidates)
    assert winner is not None and winner.decided_by == "independent_tests"
    assert "; decided over pair-b by the tests of members without a solution of their own" in winner.reason
    # Without the tester, agreement decides, and the winner says that instead.
    pair_and_right = [candidates[0], candidates[2]]
    scores = score_candidates(pair_and_right, [], [], True, executed)
    winner = choose_winner(scores, pair_and_right)
    assert winner is not None and winner.agent_id == "pair-a" and winner.decided_by == "members_tests"


def test_the_winner_names_the_evidence_that_put_it_above_the_runner_up() -> None:
    own_failed = CheckResult(name="own_tests", applicable=True, score=0.0, detail="its code passes 0 of 1")
    user_failed = CheckResult(
        name="user_tests", applicable=True, score=0.5, detail="1 of 2 of your tests pass"
    )
    user_passed = user_failed.model_copy(update={"score": 1.0})
    candidates = [_candidate("a", CODE), _candidate("b", CODE)]

    def decided(specified: dict[str, list[CheckResult]], ballots: list[Ballot] | None = None) -> str | None:
        scores = score_candidates(
            candidates, ballots or [], [], True, {"a": PASSED, "b": PASSED}, specified=specified
        )
        winner = choose_winner(scores, candidates)
        assert winner is not None
        return winner.decided_by

    assert decided({"a": [user_failed], "b": [user_passed]}) == "user_tests"
    assert decided({"a": [own_failed]}) == "self_contradiction"
    ballot = Ballot(reviewer_id="x", labels={"A": "b", "B": "a"}, order=["b", "a"])
    assert decided({}, [ballot]) == "ballots"
    assert decided({}) == "council_order"
    single = [_candidate("only", CODE)]
    winner = choose_winner(score_candidates(single, [], []), single)
    assert (
        winner is not None and winner.decided_by == "sole_candidate" and "decided over" not in winner.reason
    )

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from agents.conclusion import conclude
from agents.models import (
    AgentOutcome,
    AgentStatus,
    DeliberationRequest,
    DeliberationStatus,
    ErrorInfo,
    Verdict,
)
from agents.planning import largest_stage_calls, plan_council, plan_critiques
from agents.roles import Role
from tests.factories import completed, critique, failed


def test_agent_ids_are_numbered_per_role() -> None:
    council = plan_council(DeliberationRequest(task="t", roles=["DEV", "QA"], agents_per_role=2))
    assert [a.agent_id for a in council] == [
        "agent-dev-001",
        "agent-dev-002",
        "agent-qa-001",
        "agent-qa-002",
    ]


def test_first_agent_is_plain_and_the_others_diverge_hotter() -> None:
    council = plan_council(DeliberationRequest(task="t", roles=["DEV"], agents_per_role=3, temperature=1.0))
    assert [(a.diverge, a.temperature) for a in council] == [(False, 1.0), (True, 1.3), (True, 1.3)]


def test_diverging_temperature_is_capped_at_two() -> None:
    council = plan_council(DeliberationRequest(task="t", roles=["QA"], agents_per_role=2, temperature=1.8))
    assert council[1].temperature == 2.0


def _outcome(agent_id: str, status: AgentStatus) -> AgentOutcome:
    if status is AgentStatus.COMPLETED:
        return completed(agent_id)
    return failed(agent_id, status=status)


def test_quorum_met_with_a_missing_agent_says_which_one() -> None:
    request = DeliberationRequest(task="t", roles=["DEV"], agents_per_role=3, quorum=2)
    start = datetime.now(UTC)
    outcomes = [
        _outcome("agent-dev-001", AgentStatus.COMPLETED),
        failed(
            "agent-dev-002",
            status=AgentStatus.TIMED_OUT,
            error=ErrorInfo(type="DeadlineExceeded", message="not finished", retryable=False),
        ),
        _outcome("agent-dev-003", AgentStatus.COMPLETED),
    ]
    result = conclude(request, "d1", outcomes, start, start + timedelta(seconds=2))
    assert result.status is DeliberationStatus.COMPLETED
    assert result.missing == ["agent-dev-002"]
    assert "agent-dev-002 (timed out at the deadline)" in result.summary
    assert (result.prompt_tokens, result.completion_tokens, result.duration_ms) == (20, 10, 2000)


def test_default_quorum_is_every_agent() -> None:
    request = DeliberationRequest(task="t", roles=["DEV"], agents_per_role=2)
    now = datetime.now(UTC)
    outcomes = [
        _outcome("agent-dev-001", AgentStatus.COMPLETED),
        _outcome("agent-dev-002", AgentStatus.FAILED),
    ]
    result = conclude(request, "d1", outcomes, now, now)
    assert result.status is DeliberationStatus.FAILED
    assert result.quorum == 2


def test_critics_come_from_other_roles_first_and_the_load_is_spread() -> None:
    council = plan_council(DeliberationRequest(task="t", roles=["DEV", "QA", "ARCHITECT"], agents_per_role=2))
    pairs = plan_critiques(council, critics=2)
    for critic, author in pairs:
        assert critic.role != author.role and critic != author
    assert Counter(author.agent_id for _, author in pairs) == {a.agent_id: 2 for a in council}
    assert max(Counter(critic.agent_id for critic, _ in pairs).values()) <= 3


@pytest.mark.parametrize(("agents_per_role", "critics"), [(2, 1), (2, 2), (3, 1), (1, 2), (1, 1)])
def test_every_agent_writes_as_many_critiques_as_the_others_give_or_take_one(
    agents_per_role: int, critics: int
) -> None:
    council = plan_council(DeliberationRequest(task="t", agents_per_role=agents_per_role))
    written = Counter(critic.agent_id for critic, _ in plan_critiques(council, critics))
    loads = [written[agent.agent_id] for agent in council]
    assert sum(loads) == len(council) * critics
    assert max(loads) - min(loads) <= 1, loads


def test_a_single_role_council_falls_back_to_its_other_agents() -> None:
    council = plan_council(DeliberationRequest(task="t", roles=["DEV"], agents_per_role=3))
    pairs = plan_critiques(council, critics=5)
    assert [(c.agent_id, a.agent_id) for c, a in pairs if a.agent_id == "agent-dev-001"] == [
        ("agent-dev-002", "agent-dev-001"),
        ("agent-dev-003", "agent-dev-001"),
    ]
    assert plan_critiques(council[:1], critics=2) == []


@pytest.mark.parametrize(
    ("rounds", "critics", "council_size", "expected"),
    [(0, 2, 50, 50), (1, 2, 50, 100), (1, 3, 2, 2), (1, 2, 1, 1)],
)
def test_the_largest_stage_is_the_critiques_of_a_round_else_one_call_per_agent(
    rounds: int, critics: int, council_size: int, expected: int
) -> None:
    request = DeliberationRequest(task="t", rounds=rounds, critics=critics)
    assert largest_stage_calls(request, council_size) == expected


def test_usage_is_totalled_per_agent_per_stage_and_overall() -> None:
    request = DeliberationRequest(task="t", roles=["DEV", "QA"])
    now = datetime.now(UTC)
    review = critique(content="too vague", prompt_tokens=7, completion_tokens=3, latency_ms=40)
    lost = review.model_copy(update={"status": AgentStatus.FAILED, "content": None, "prompt_tokens": 99})
    outcomes = [completed("agent-dev-001"), completed("agent-qa-001", Role.QA)]
    result = conclude(request, "d1", outcomes, now, now, Verdict(reviews=[review, lost]))
    usage = result.usage
    assert usage.total.model_dump() == {
        "calls": 3,
        "prompt_tokens": 27,
        "completion_tokens": 13,
        "latency_ms": 42,
    }
    assert usage.by_stage["critique"].calls == 1 and usage.by_stage["proposal"].calls == 2
    assert usage.by_agent["agent-qa-001"].prompt_tokens == 17
    assert (result.prompt_tokens, result.completion_tokens) == (27, 13)

from datetime import UTC, datetime, timedelta

from agents.council import conclude, plan_council
from agents.models import AgentOutcome, AgentStatus, DeliberationRequest, DeliberationStatus
from tests.factories import completed, failed


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
        _outcome("agent-dev-002", AgentStatus.TIMED_OUT),
        _outcome("agent-dev-003", AgentStatus.COMPLETED),
    ]
    result = conclude(request, "d1", outcomes, start, start + timedelta(seconds=2))
    assert result.status is DeliberationStatus.COMPLETED
    assert result.missing == ["agent-dev-002"]
    assert "agent-dev-002 (timed_out)" in result.summary
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

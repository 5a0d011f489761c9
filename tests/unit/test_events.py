import pytest

from agents.events import (
    AGENT_RESPONSE_COMPLETED,
    AGENT_RESPONSE_FAILED,
    DELIBERATION_FAILED,
    AgentResponseEvent,
    agent_event,
    parse_event,
    ranked_event,
)
from agents.models import AgentOutcome, AgentStatus, Ballot, ErrorInfo
from agents.roles import Role
from tests.factories import completed, failed

FAILED = failed(
    "agent-qa-001",
    Role.QA,
    status=AgentStatus.TIMED_OUT,
    attempts=2,
    duration_ms=5,
    error=ErrorInfo(type="DeadlineExceeded", message="late", retryable=False),
)
# The same agent, each way its call can end.
OUTCOMES = {
    AgentStatus.COMPLETED: completed("agent-qa-001", Role.QA),
    AgentStatus.FAILED: failed("agent-qa-001", Role.QA),
    AgentStatus.TIMED_OUT: FAILED,
}


def test_failed_and_timed_out_agents_go_to_the_failed_subject() -> None:
    subjects = {status: agent_event("d1", "task-1", outcome).subject for status, outcome in OUTCOMES.items()}
    assert subjects == {
        AgentStatus.COMPLETED: AGENT_RESPONSE_COMPLETED,
        AgentStatus.FAILED: AGENT_RESPONSE_FAILED,
        AgentStatus.TIMED_OUT: AGENT_RESPONSE_FAILED,
    }
    assert agent_event("d1", "task-1", FAILED).schema_version == 1


def test_one_dedup_id_per_agent_whatever_the_outcome() -> None:
    ids = {status: agent_event("d1", "t", outcome).msg_id for status, outcome in OUTCOMES.items()}
    assert ids == dict.fromkeys(OUTCOMES, "d1.agent-qa-001")
    # Per agent and per deliberation: another agent, or another deliberation, is another id.
    assert agent_event("d1", "t", completed("agent-qa-002", Role.QA)).msg_id == "d1.agent-qa-002"
    assert agent_event("d2", "t", OUTCOMES[AgentStatus.COMPLETED]).msg_id == "d2.agent-qa-001"


def test_events_round_trip_through_parse_event() -> None:
    event = agent_event("d1", "t", FAILED)
    parsed = parse_event(event.subject, event.model_dump_json().encode())
    assert isinstance(parsed, AgentResponseEvent)
    assert parsed == event


@pytest.mark.parametrize(
    ("subject", "payload", "message"),
    [
        ("agent.response.unknown", b"{}", "no event type"),
        (AGENT_RESPONSE_COMPLETED, b"{not json", "Invalid JSON"),
        (DELIBERATION_FAILED, b'{"schema_version": 2}', "Input should be 1"),
    ],
)
def test_consumed_payloads_are_validated(subject: str, payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_event(subject, payload)


def test_an_event_on_the_wrong_subject_is_refused() -> None:
    event = agent_event("d1", "t", FAILED)
    with pytest.raises(ValueError, match="arrived on"):
        parse_event(AGENT_RESPONSE_COMPLETED, event.model_dump_json().encode())


def test_a_completed_outcome_must_carry_a_proposal() -> None:
    with pytest.raises(ValueError, match="carries a proposal"):
        AgentOutcome(agent_id="a", role=Role.DEV, status=AgentStatus.COMPLETED, attempts=1, duration_ms=1)


def test_ranked_event_counts_ballots_and_names_abstentions() -> None:
    ballots = [
        Ballot(reviewer_id="agent-dev-001", labels={}, order=["agent-qa-001", "agent-data-001"]),
        Ballot(
            reviewer_id="agent-qa-001", labels={}, abstained="malformed ranking: no FINAL RANKING section"
        ),
    ]
    event = ranked_event("d1", "t1", [], ballots, None)
    assert event.ballots_counted == 1
    assert event.abstentions == ["agent-qa-001: malformed ranking: no FINAL RANKING section"]
    assert (event.subject, event.msg_id) == ("deliberation.ranked", "d1.ranked")

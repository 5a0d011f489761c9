"""The check every rerun path ends with: the stream and the stored result agree, and each
deliberation concluded once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from agents.adapters.nats import EventBus
from agents.events import (
    AgentResponseEvent,
    DeliberationEvent,
    Event,
    RankedEvent,
    ReviewEvent,
    deliberation_event,
)
from agents.models import AgentOutcome, DeliberationResult, Stage
from agents.settings import bus_config_for


def outcome_of(event: AgentResponseEvent) -> AgentOutcome:
    return AgentOutcome.model_validate(event.model_dump(include=set(AgentOutcome.model_fields)))


def assert_stream_agrees_with_stored_result(nats_url: str, deliberation_id: str) -> DeliberationResult:
    """Every event of the deliberation once, and each saying what the stored result says."""
    with EventBus.connect(bus_config_for(nats_url)) as bus:
        events = bus.read_events(deliberation_id)
        result = bus.load_result(deliberation_id)
    assert result is not None
    assert_events_agree_with_result(events, result)
    return result


def assert_events_agree_with_result(events: Sequence[Event], result: DeliberationResult) -> None:
    """`events` (one deliberation's, read from the streams) each once, and each saying what
    `result` says; the benchmark reads every deliberation's at once and checks each here."""
    assert len({e.msg_id for e in events}) == len(events), "an event was published twice"
    announced = Counter(e.agent_id for e in events if isinstance(e, AgentResponseEvent))
    assert all(n == 1 for n in announced.values()), f"an agent's outcome was announced twice: {announced}"
    agents = {e.agent_id: outcome_of(e) for e in events if isinstance(e, AgentResponseEvent)}
    stored = {o.agent_id: o for o in result.outcomes}
    assert agents == stored, f"announced {agents} but stored {stored}"
    critiques = {(e.critic_id, e.author_id): e.critique for e in events if isinstance(e, ReviewEvent)}
    assert critiques == {
        (c.agent_id, c.subject_id): c.content for c in result.reviews if c.stage is Stage.CRITIQUE and c.ok
    }
    ranked = [e for e in events if isinstance(e, RankedEvent)]
    assert [r.scores for r in ranked] == ([result.scores] if result.scores else [])
    [final] = [e for e in events if isinstance(e, DeliberationEvent)]
    assert final.model_dump(exclude={"timestamp"}) == deliberation_event(result).model_dump(
        exclude={"timestamp"}
    )


def assert_each_concluded_once(nats_url: str, deliberation_ids: Iterable[str]) -> None:
    """One final event each (deliberation.completed, .failed or .cancelled), and each
    deliberation's stream agreeing with its stored result."""
    ids = list(deliberation_ids)
    with EventBus.connect(bus_config_for(nats_url)) as bus:
        finals = Counter(e.deliberation_id for e in bus.read_events() if isinstance(e, DeliberationEvent))
    assert finals == dict.fromkeys(ids, 1), finals
    for deliberation_id in ids:
        assert_stream_agrees_with_stored_result(nats_url, deliberation_id)

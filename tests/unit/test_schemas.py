"""The JSON Schemas in schemas/ match the event models, and real events validate against
them (what a consumer in another language relies on)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import jsonschema
import pytest

from agents.events import Event, agent_event, deliberation_event, ranked_event, review_event
from agents.models import DeliberationResult, DeliberationStatus
from flows.schemas import SCHEMA_DIR, main
from tests.factories import FOREIGN_PROPOSAL, completed, critique, failed


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text()))


def test_the_schema_files_match_the_event_models() -> None:
    assert main(["--check"]) == 0


def _events() -> dict[str, Event]:
    outcomes = [completed("agent-dev-001"), failed("agent-qa-001")]
    review = critique(content="Add tests.")
    result = DeliberationResult(
        deliberation_id="d1",
        task_id="t1",
        status=DeliberationStatus.COMPLETED,
        quorum=1,
        completed=1,
        missing=["agent-qa-001"],
        outcomes=outcomes,
        prompt_tokens=10,
        completion_tokens=5,
        started_at=datetime.now(UTC),
        duration_ms=100,
        summary="1 of 2 proposals (quorum 1) met",
    )
    return {
        "agent.response": agent_event("d1", "t1", outcomes[1]),
        "deliberation.review.completed": review_event("d1", "t1", review),
        "deliberation.ranked": ranked_event("d1", "t1", [], [], None),
        "deliberation": deliberation_event(result),
    }


@pytest.mark.parametrize(
    "name", ["agent.response", "deliberation.review.completed", "deliberation.ranked", "deliberation"]
)
def test_real_events_validate_against_their_schema(name: str) -> None:
    validator(name).validate(json.loads(_events()[name].model_dump_json()))


def test_a_foreign_payload_does_not_validate() -> None:
    # What another service published on agent.response.completed (issue 14).
    assert not validator("agent.response").is_valid(FOREIGN_PROPOSAL)
    newer = json.loads(_events()["agent.response"].model_dump_json()) | {"schema_version": 2}
    assert not validator("agent.response").is_valid(newer)


def test_the_fleet_apis_stubs_match_its_proto() -> None:
    from flows.service.fleet.generate import main as generate

    assert generate(["--check"]) == 0

"""JSON Schemas of the events, for consumers not written in Python, generated from the
pydantic event models (`python -m flows.schemas` writes them to schemas/).

schema_version rules (README, "Events"): a change a consumer can ignore (a new optional
field) keeps the version; anything else (a field removed, renamed, retyped or made
required, a changed meaning) raises it, and a consumer that sees a version it does not
know should skip the message, as this pipeline does.
"""

from __future__ import annotations

import json

from agents.events import (
    AGENT_RESPONSE_COMPLETED,
    AGENT_RESPONSE_FAILED,
    DELIBERATION_ACCEPTED,
    DELIBERATION_CANCELLED,
    DELIBERATION_COMPLETED,
    DELIBERATION_FAILED,
    DELIBERATION_RANKED,
    DELIBERATION_REVIEW_COMPLETED,
    DELIBERATION_STARTED,
    AgentResponseEvent,
    DeliberationEvent,
    DeliberationProgressEvent,
    Event,
    RankedEvent,
    ReviewEvent,
)

# File stem -> the model and the subjects its messages arrive on.
EVENT_SCHEMAS: dict[str, tuple[type[Event], list[str]]] = {
    "agent.response": (AgentResponseEvent, [AGENT_RESPONSE_COMPLETED, AGENT_RESPONSE_FAILED]),
    "deliberation.review.completed": (ReviewEvent, [DELIBERATION_REVIEW_COMPLETED]),
    "deliberation.ranked": (RankedEvent, [DELIBERATION_RANKED]),
    "deliberation": (
        DeliberationEvent,
        [DELIBERATION_COMPLETED, DELIBERATION_FAILED, DELIBERATION_CANCELLED],
    ),
    "deliberation.progress": (DeliberationProgressEvent, [DELIBERATION_ACCEPTED, DELIBERATION_STARTED]),
}


def event_schemas() -> dict[str, str]:
    """File name -> schema text, as the files in schemas/ should read."""
    files = {}
    for stem, (model, subjects) in EVENT_SCHEMAS.items():
        schema = model.model_json_schema(mode="serialization")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["description"] = f"Published on {', '.join(subjects)}. " + (schema.get("description") or "")
        schema["x-subjects"] = subjects
        files[f"{stem}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files

"""JSON Schemas of the events and of the deliberation service's requests and replies, for
clients not written in Python, generated from the pydantic models (`python -m flows.schemas`
writes them to schemas/).

schema_version rules (README, "Events"): a change a consumer can ignore (a new optional
field) keeps the version; anything else (a field removed, renamed, retyped or made
required, a changed meaning) raises it, and a consumer that sees a version it does not
know should skip the message, as this pipeline does.
"""

from __future__ import annotations

import json

from pydantic import BaseModel

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
from agents.models import DeliberationRequest
from agents.service import DeliberationRef, StatusReply, SubmitReply

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


# File stem -> the model and the endpoint's subject: what the service takes, what it answers.
SERVICE_SCHEMAS: dict[str, tuple[type[BaseModel], str]] = {
    "service.submit.request": (DeliberationRequest, "deliberation.submit"),
    "service.submit.reply": (SubmitReply, "deliberation.submit"),
    "service.get.request": (DeliberationRef, "deliberation.get"),
    "service.get.reply": (StatusReply, "deliberation.get"),
    "service.cancel.request": (DeliberationRef, "deliberation.cancel"),
    "service.cancel.reply": (StatusReply, "deliberation.cancel"),
}


def service_schemas() -> dict[str, str]:
    """File name -> schema text of each endpoint's request and reply (an error reply has no
    body: its code and reason are the Nats-Service-Error-Code and Nats-Service-Error headers)."""
    files = {}
    for stem, (model, subject) in SERVICE_SCHEMAS.items():
        asked = stem.endswith(".request")
        schema = model.model_json_schema(mode="validation" if asked else "serialization")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        kind = "request to" if asked else "reply of"
        schema["description"] = f"The {kind} {subject}. " + (schema.get("description") or "")
        schema["x-subject"] = subject
        files[f"{stem}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files

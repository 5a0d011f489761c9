"""JSON Schemas of the events, for consumers not written in Python. Generated from the
pydantic event models: `python -m agents.schemas` writes them to schemas/ at the top of the
repository, `python -m agents.schemas --check` exits 1 if those files differ from the
models (the test suite runs that check).

schema_version rules (README, "Events"): a change a consumer can ignore (a new optional
field) keeps the version; anything else (a field removed, renamed, retyped or made
required, a changed meaning) raises it, and a consumer that sees a version it does not
know should skip the message, as this pipeline does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from agents.events import (
    AGENT_RESPONSE_COMPLETED,
    AGENT_RESPONSE_FAILED,
    DELIBERATION_COMPLETED,
    DELIBERATION_FAILED,
    DELIBERATION_RANKED,
    DELIBERATION_REVIEW_COMPLETED,
    AgentResponseEvent,
    DeliberationEvent,
    Event,
    RankedEvent,
    ReviewEvent,
)

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"

# File stem -> the model and the subjects its messages arrive on.
EVENT_SCHEMAS: dict[str, tuple[type[Event], list[str]]] = {
    "agent.response": (AgentResponseEvent, [AGENT_RESPONSE_COMPLETED, AGENT_RESPONSE_FAILED]),
    "deliberation.review.completed": (ReviewEvent, [DELIBERATION_REVIEW_COMPLETED]),
    "deliberation.ranked": (RankedEvent, [DELIBERATION_RANKED]),
    "deliberation": (DeliberationEvent, [DELIBERATION_COMPLETED, DELIBERATION_FAILED]),
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    expected = event_schemas()
    if argv == ["--check"]:
        stale = [
            name
            for name, text in expected.items()
            if not (SCHEMA_DIR / name).exists() or (SCHEMA_DIR / name).read_text() != text
        ]
        for name in stale:
            print(f"schemas/{name} differs from the models; run python -m agents.schemas", file=sys.stderr)
        return 1 if stale else 0
    if argv:
        print("usage: python -m agents.schemas [--check]", file=sys.stderr)
        return 2
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, text in expected.items():
        (SCHEMA_DIR / name).write_text(text)
    print(f"wrote {len(expected)} schemas to {SCHEMA_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

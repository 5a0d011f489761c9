"""A code task's proposal in a structured form: the explanation, the solution and its tests
as JSON fields, asked for where the member's server can hold an answer to a schema (as the
ballots are), so a small model's code is never lost in prose. The answer is rendered back
into the proposal every other stage reads (text with fenced Python blocks), so the review,
the ranking, the code split and the events see one shape whichever way it was asked. Pure.
"""

from __future__ import annotations

import json
import re
from typing import Any

from agents.checks import looks_like_code
from agents.models import StageCall

PROPOSAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "explanation": {"type": "string"},
        "solution": {"type": "string"},
        "tests": {"type": "string"},
    },
    "required": ["explanation", "solution", "tests"],
    "additionalProperties": False,
}
FIELDS = ("explanation", "solution", "tests")

# A field of an answer cut short (finish_reason=length) is read as far as it goes.
_FIELD = {name: re.compile(rf'"{name}"\s*:\s*"((?:[^"\\]|\\.)*)', re.DOTALL) for name in FIELDS}


def read_fields(answer: str) -> dict[str, str] | None:
    """The form's fields of an answer, or None if it holds none of them: a whole JSON
    object as asked, else what a cut-short one holds of each field."""
    try:
        parsed = json.loads(answer)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        fields = {name: parsed[name] for name in FIELDS if isinstance(parsed.get(name), str)}
    else:
        fields = {}
        for name, pattern in _FIELD.items():
            if (match := pattern.search(answer)) is not None:
                fields[name] = _unescaped(match.group(1))
    return fields or None


def _unescaped(text: str) -> str:
    # A cut may fall inside an escape: drop its remains rather than the field.
    for end in range(len(text), max(len(text) - 6, -1), -1):
        try:
            return str(json.loads(f'"{text[:end]}"'))
        except ValueError:
            continue
    return text


def _unfenced(code: str) -> str:
    """A field's code without the fence a model may put inside it anyway."""
    stripped = code.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        stripped = stripped.removesuffix("```")
    return stripped


def _shown(code: str) -> str:
    """A code field as the proposal shows it: fenced as Python where it is code, else as the
    prose it is (a small model fills the fields with prose too: fenced, it would pass for
    code and win a code task)."""
    code = _unfenced(code).strip()
    return f"```python\n{code}\n```" if looks_like_code(code) else code


def render_proposal(answer: str) -> str:
    """The proposal as text: the explanation, then the solution and the tests, each in a
    fenced Python block where it is code. An answer with none of the fields is kept as it
    is (the model wrote text regardless: the fenced-block split reads it as before)."""
    fields = read_fields(answer)
    if fields is None:
        return answer
    parts = [fields.get("explanation", "").strip()]
    if solution := _shown(fields.get("solution", "")):
        parts.append(solution)
    if tests := _shown(fields.get("tests", "")):
        parts.append("Tests:\n\n" + tests)
    return "\n\n".join(part for part in parts if part)


def as_text(call: StageCall) -> StageCall:
    """A proposal's or revision's record with its answer as the proposal's text, where it
    was asked for in the form (`structured`); the record as it is otherwise. The call
    ledger keeps the answer as given: rendering it again changes nothing."""
    if not call.structured or call.content is None:
        return call
    return call.model_copy(update={"content": render_proposal(call.content)})

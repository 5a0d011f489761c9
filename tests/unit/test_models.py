import pytest
from pydantic import ValidationError

from agents.models import MAX_TASK_CHARS, DeliberationRequest
from agents.roles import Role


def test_roles_accept_names_in_any_case_and_as_a_comma_list() -> None:
    assert DeliberationRequest(task="t", roles="dev, Qa").roles == [Role.DEV, Role.QA]


def test_all_roles_by_default_and_quorum_defaults_to_every_agent() -> None:
    request = DeliberationRequest(task="t", agents_per_role=2)
    assert request.roles == list(Role)
    assert request.required_proposals == 10


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"task": "   "}, "task is empty"),
        ({"task": "t", "roles": ["DEV", "CEO"]}, "unknown role 'CEO'"),
        ({"task": "t", "roles": []}, "at least 1"),
        ({"task": "t", "roles": ["DEV", "dev"]}, "listed once"),
        ({"task": "t", "roles": ["DEV"], "quorum": 2}, "quorum 2 is more than the 1 agents"),
        ({"task": "t", "agents_per_role": 0}, "greater than or equal to 1"),
        ({"task": "t", "deadline_seconds": -1}, "greater than 0"),
        ({"task": "x" * (MAX_TASK_CHARS + 1)}, "at most 20000"),
        ({"task": "bad\x00byte"}, "control characters"),
        ({"task": "t", "deliberation_id": "has space"}, "should match pattern"),
        ({"task": "t", "constraints": {"requirements": [" "]}}, "must not be blank"),
        ({"task": "t", "colour": "blue"}, "Extra inputs"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DeliberationRequest.model_validate(fields)


def test_task_text_keeps_newlines_and_tabs() -> None:
    assert DeliberationRequest(task="line one\n\tline two").task == "line one\n\tline two"

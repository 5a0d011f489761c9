"""Any input is either accepted and sound, or refused with a one-line reason."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agents.errors import ConfigurationError, describe_validation_error
from agents.models import MAX_DEADLINE_SECONDS, MAX_TASK_CHARS, DeliberationRequest
from flows.cli.main import build_parser, request_from_args

huge = st.builds(
    lambda n, c: c * n, st.integers(MAX_TASK_CHARS - 3, MAX_TASK_CHARS + 3), st.sampled_from("x \n")
)
texts = st.text(max_size=200) | huge
role_names = st.sampled_from(["DEV", "qa", "Architect", "DEVOPS", "data", "CEO", "", " dev ", "DEV\n"])
numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**6), 10**6)


@settings(max_examples=300, deadline=None)
@given(
    task=texts,
    roles=st.lists(role_names, max_size=7) | role_names,
    agents_per_role=st.integers(-5, 50),
    deadline=numbers,
    quorum=st.none() | st.integers(-5, 100),
    requirements=st.lists(st.text(max_size=50), max_size=60),
)
def test_any_request_is_accepted_and_sound_or_refused_in_one_line(
    task: str,
    roles: list[str] | str,
    agents_per_role: int,
    deadline: float,
    quorum: int | None,
    requirements: list[str],
) -> None:
    try:
        request = DeliberationRequest.model_validate(
            {
                "task": task,
                "roles": roles,
                "agents_per_role": agents_per_role,
                "deadline_seconds": deadline,
                "quorum": quorum,
                "constraints": {"requirements": requirements},
            }
        )
    except ValidationError as exc:
        reason = describe_validation_error(exc)
        assert reason.startswith("invalid ") and "\n" not in reason
        return
    assert request.task and request.task == request.task.strip() and len(request.task) <= MAX_TASK_CHARS
    assert 1 <= request.required_proposals <= request.agent_count
    assert math.isfinite(request.deadline_seconds) and 0 < request.deadline_seconds <= MAX_DEADLINE_SECONDS
    assert len(set(request.roles)) == len(request.roles) >= 1
    request.model_dump_json()  # whatever is accepted can be published


@settings(max_examples=300, deadline=None)
@given(
    argv=st.lists(
        st.text(max_size=30) | st.sampled_from(["--roles", "--quorum", "--timeout", "-1"]), max_size=8
    )
)
def test_any_command_line_parses_to_a_request_or_a_usage_error(argv: list[str]) -> None:
    try:
        args = build_parser().parse_args(argv)
        request_from_args(args).model_dump_json()
    except SystemExit as exc:
        assert exc.code == 2
    except (ValidationError, ConfigurationError):
        pass


@pytest.mark.parametrize("task", ["caf\udce9 undecodable", "bell\x07"])
def test_undecodable_or_control_text_is_refused(task: str) -> None:
    with pytest.raises(ValidationError, match="valid string|control characters"):
        DeliberationRequest(task=task)

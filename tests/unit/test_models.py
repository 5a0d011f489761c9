import pytest
from pydantic import ValidationError

from agents.models import MAX_CONTEXT_CHARS, MAX_CONTEXT_FILES, MAX_TASK_CHARS, DeliberationRequest
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


def _files(*paths: str, content: str = "x = 1\n") -> list[dict[str, str]]:
    return [{"path": path, "content": content} for path in paths]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"context": _files("/etc/passwd")}, "not a relative path"),
        ({"context": _files("../secrets.py")}, "not a relative path"),
        ({"context": _files("src/./a.py")}, "not a relative path"),
        ({"context": _files("src//a.py")}, "not a relative path"),
        ({"context": _files("src\\a.py")}, "not a relative path"),
        ({"context": _files("")}, "at least 1 character"),
        ({"context": _files("a\x1b.py")}, "control characters"),
        ({"context": _files("a.py", "b.py", "a.py")}, "'a.py' is given twice"),
        ({"context": _files("src/lib", "src/lib/a.py")}, "'src/lib' is both a file and a folder"),
        (
            {"context": _files("logo.png", content="\x89PNG\x00\x01")},
            "context file contains control characters",
        ),
        ({"diff": "Binary \x00 diff"}, "diff contains control characters"),
        ({"context": _files(*(f"m{n}.py" for n in range(MAX_CONTEXT_FILES + 1)))}, "at most 500 items"),
        (
            {"context": _files("a.py", content="x" * MAX_CONTEXT_CHARS), "diff": "+1\n"},
            "context and diff hold 200,003 characters, over the 200,000",
        ),
        ({"context_tokens": 0}, "greater than or equal to 1"),
        ({"context": [{"path": "a.py", "content": "", "mode": "755"}]}, "Extra inputs"),
    ],
)
def test_bad_context_is_refused_with_a_reason(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DeliberationRequest.model_validate({"task": "t", **fields})


def test_context_keeps_paths_and_text_as_given() -> None:
    files = _files(".github/ci.yml", "src/mathlib.py", content="a\tb\r\n")
    request = DeliberationRequest.model_validate({"task": "t", "context": files})
    assert [(f.path, f.content) for f in request.context] == [(f["path"], f["content"]) for f in files]

"""Named model endpoints: how the operator defines them and how a request assigns them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from agents.errors import ConfigurationError
from agents.models import DeliberationRequest
from agents.planning import assign_endpoints, plan_council
from agents.settings import Settings


def test_endpoints_come_from_the_environment_and_a_toml_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DELIBERATION_ENDPOINTS", json.dumps({"coder": {"url": "http://a", "concurrency": 4}}))
    file = tmp_path / "endpoints.toml"
    file.write_text('[endpoints.big]\nurl = "http://b"\nmodel = "m-70b"\napi_key_env = "BIG_KEY"\n')
    monkeypatch.setenv("DELIBERATION_ENDPOINTS_FILE", str(file))
    endpoints = Settings().named_endpoints()
    assert endpoints["coder"].url == "http://a" and endpoints["coder"].concurrency == 4
    assert endpoints["coder"].model == "" and endpoints["coder"].structured_output == "auto"
    assert endpoints["big"].model == "m-70b" and endpoints["big"].api_key_env == "BIG_KEY"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[endpoints.x\n", "is not TOML"),
        (
            '[endpoints.x]\nurl = "http://a"\nport = 1\n',
            "endpoints.toml: x.port: Extra inputs are not permitted",
        ),
        ('[endpoints.default]\nurl = "http://a"\n', "the endpoint 'default' is VLLM_URL's"),
        ('[endpoints.coder]\nurl = "http://a"\n', "endpoint 'coder' is defined twice"),
    ],
)
def test_a_bad_endpoints_file_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str, message: str
) -> None:
    monkeypatch.setenv("DELIBERATION_ENDPOINTS", json.dumps({"coder": {"url": "http://a"}}))
    file = tmp_path / "endpoints.toml"
    file.write_text(text)
    monkeypatch.setenv("DELIBERATION_ENDPOINTS_FILE", str(file))
    with pytest.raises(ConfigurationError) as raised:
        Settings().named_endpoints()
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_the_default_endpoint_cannot_be_redefined_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIBERATION_ENDPOINTS", json.dumps({"default": {"url": "http://a"}}))
    with pytest.raises(ValidationError, match="the endpoint 'default' is VLLM_URL's"):
        Settings()


def test_an_agent_s_own_endpoint_wins_over_its_role_s_and_the_rest_use_the_default() -> None:
    request = DeliberationRequest(
        task="t",
        roles=["DEV", "QA"],
        agents_per_role=2,
        endpoints={"dev": "coder", "agent-dev-002": "big", "chair": "big"},
    )
    assert assign_endpoints(request, plan_council(request)) == {
        "agent-dev-001": "coder",
        "agent-dev-002": "big",
        "agent-qa-001": "default",
        "agent-qa-002": "default",
        "chair": "big",
    }


@pytest.mark.parametrize(
    ("endpoints", "message"),
    [
        ({"OPS": "x"}, "'OPS' is not a role"),
        ({"DATA": "x"}, "role DATA is not in the council"),
        ({"agent-dev-003": "x"}, "agent-dev-003 is not a member of this council"),
        ({"DEV": "a b"}, "DEV: 'a b' is not an endpoint name"),
    ],
)
def test_an_assignment_to_no_member_is_refused(endpoints: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DeliberationRequest(task="t", roles=["DEV", "QA"], agents_per_role=2, endpoints=endpoints)


def test_the_model_flag_names_the_default_model_or_assigns_endpoints() -> None:
    from flows.cli.main import build_parser, request_from_args

    args = build_parser().parse_args(
        ["t", "--roles", "DEV,QA", "--model", "qwen", "--model", "DEV=coder", "--model", "chair=big"]
    )
    request = request_from_args(args)
    assert request.model == "qwen" and request.endpoints == {"DEV": "coder", "chair": "big"}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "a", "--model", "b"], "--model 'b': a model was named already ('a')"),
        (["--model", "DEV="], "--model 'DEV=' is not WHO=ENDPOINT"),
        (["--model", "DEV=a", "--model", "DEV=b"], "--model 'DEV=b': DEV was given an endpoint already"),
    ],
)
def test_a_bad_model_flag_is_one_line(flags: list[str], message: str) -> None:
    from flows.cli.main import build_parser, request_from_args

    with pytest.raises(ConfigurationError, match=re.escape(message)):
        request_from_args(build_parser().parse_args(["t", "--roles", "DEV,QA", *flags]))

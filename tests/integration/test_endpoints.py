"""Several model endpoints in one council, and ballots held to a JSON schema where a server
can do it: the deliberate flow on real Ray, Prefect, nats-server and two OpenAI-compatible
servers on 127.0.0.1."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from agents.events import Event
from agents.models import DeliberationRequest, DeliberationResult, Stage
from flows.deliberate import deliberate
from flows.runtime.embedded import free_port
from tests.fake_llm import FakeLLMServer, ok

pytestmark = pytest.mark.usefixtures("pipeline")
ReadEvents = Callable[[str], list[Event]]
SHOWN_LABEL = re.compile(r"^Proposal ([A-Z]{1,2}):$", re.M)


@pytest.fixture
def coder(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMServer]:
    """A second server, defined as the endpoint `coder`."""
    server = FakeLLMServer(model="coder-model").start()
    monkeypatch.setenv("DELIBERATION_ENDPOINTS", json.dumps({"coder": {"url": server.url}}))
    yield server
    server.stop()


def run(**fields: Any) -> tuple[Any, DeliberationResult | Exception]:
    fields.setdefault("deliberation_id", uuid.uuid4().hex)
    state = deliberate(request=DeliberationRequest(**fields), return_state=True)
    return state, state.result(raise_on_failure=False)


def ballot_answer(body: dict[str, Any]) -> str | None:
    """Proposals and critiques as the default answer; a ranking the last label first, as
    JSON when a schema was asked for (as a constraining server would), else as text."""
    if not body["user"].endswith(".ranking"):
        return None
    labels = SHOWN_LABEL.findall(body["messages"][-1]["content"])[::-1]
    if "response_format" in body or "JSON object" in body["messages"][-1]["content"]:
        return json.dumps({"ranking": labels, "reasons": {name: f"reason on {name}" for name in labels}})
    return "FINAL RANKING:\n" + "\n".join(f"{i}. Proposal {name}" for i, name in enumerate(labels, 1))


def test_each_role_speaks_through_its_own_server_and_every_record_says_which_model(
    pipeline: FakeLLMServer, coder: FakeLLMServer
) -> None:
    pipeline.responder = coder.responder = ballot_answer
    state, result = run(
        task="t", roles=["DEV", "QA", "ARCHITECT"], endpoints={"DEV": "coder"}, rounds=1, critics=1
    )
    assert state.is_completed() and isinstance(result, DeliberationResult), result
    # Counted at the servers: DEV's calls (proposal, critique, revision, ballot) at its own.
    assert {call.agent.split(".")[0] for call in coder.calls if call.agent} == {"agent-dev-001"}
    assert {call.agent.split(".")[0] for call in pipeline.calls if call.agent} == {
        "agent-qa-001",
        "agent-architect-001",
    }
    assert {c.body["model"] for c in coder.calls} == {"coder-model"}
    assert len(coder.calls) == 4
    models = {o.agent_id: o.proposal.model for o in result.outcomes if o.proposal}
    assert models == {
        "agent-dev-001": "coder-model",
        "agent-qa-001": "fake-model",
        "agent-architect-001": "fake-model",
    }
    assert {(c.agent_id, c.model) for c in result.reviews if c.stage is Stage.CRITIQUE} >= {
        ("agent-dev-001", "coder-model")
    }
    assert {b.reviewer_id: b.model for b in result.ballots}["agent-dev-001"] == "coder-model"
    # Neither server says what it is, so no ballot was asked as JSON; all were read as text.
    assert not any("response_format" in c.body for c in [*pipeline.calls, *coder.calls])
    assert all(b.abstained is None and len(b.order) == 2 for b in result.ballots)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    report = next(str(a.data) for a in artifacts if a.type == "markdown")
    assert "| model | coder-model (agent-dev-001); fake-model (agent-qa-001, agent-architect-001) |" in report


def test_an_endpoint_that_is_down_is_named_by_the_preflight_and_nothing_is_published(
    pipeline: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, read_events: ReadEvents
) -> None:
    monkeypatch.setenv(
        "DELIBERATION_ENDPOINTS", json.dumps({"coder": {"url": f"http://127.0.0.1:{free_port()}"}})
    )
    deliberation_id = uuid.uuid4().hex
    state, result = run(
        task="t", roles=["DEV", "QA"], endpoints={"QA": "coder"}, deliberation_id=deliberation_id
    )
    assert not state.is_completed()
    assert "model endpoint 'coder': cannot reach http://127.0.0.1:" in str(result)
    assert pipeline.calls == []
    assert read_events(deliberation_id) == []


def test_an_endpoint_nobody_defined_is_refused_with_the_names_that_are(
    pipeline: FakeLLMServer, coder: FakeLLMServer
) -> None:
    state, result = run(task="t", roles=["DEV", "QA"], endpoints={"QA": "big"})
    assert state.is_failed()
    assert str(result) == "unknown model endpoint 'big'; defined: default, coder (DELIBERATION_ENDPOINTS)"
    assert pipeline.calls == coder.calls == []


def test_calls_are_capped_per_server_not_across_servers(
    pipeline: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = FakeLLMServer(model="small-model", default=ok(delay=0.3)).start()
    try:
        monkeypatch.setenv(
            "DELIBERATION_ENDPOINTS", json.dumps({"small": {"url": small.url, "concurrency": 1}})
        )
        pipeline.default = ok(delay=0.3)
        state, result = run(
            task="t", roles=["DEV", "QA"], agents_per_role=3, endpoints={"DEV": "small"}, rounds=0
        )
        assert state.is_completed(), result
        # Each agent's proposal and ballot.
        assert len(small.calls) == len(pipeline.calls) == 6
        assert all(call.agent and call.agent.startswith("agent-dev-") for call in small.calls)
        assert small.max_in_flight == 1
        assert pipeline.max_in_flight == 3
    finally:
        small.stop()


def test_ballots_are_asked_as_json_where_the_server_holds_answers_to_a_schema(
    pipeline: FakeLLMServer,
) -> None:
    pipeline.owned_by = "vllm"  # as vLLM's model cards say
    pipeline.responder = ballot_answer
    state, result = run(task="t", roles=["DEV", "QA", "ARCHITECT"], rounds=0)
    assert state.is_completed() and isinstance(result, DeliberationResult), result
    rankings = [c.body for c in pipeline.calls if c.agent and c.agent.endswith(".ranking")]
    assert len(rankings) == 3
    for body in rankings:
        constraint = body["response_format"]
        assert constraint["type"] == "json_schema"
        schema = constraint["json_schema"]["schema"]
        labels = SHOWN_LABEL.findall(body["messages"][-1]["content"])
        # Each label exactly once: the ranking is one of their orders.
        assert sorted(map(tuple, schema["properties"]["ranking"]["enum"])) == sorted(
            [tuple(labels), tuple(labels[::-1])]
        )
    # Proposals are free text.
    assert not any("response_format" in c.body for c in pipeline.calls if c.agent and "." not in c.agent)
    for ballot in result.ballots:
        assert ballot.abstained is None and len(ballot.order) == 2
        last_shown = next(agent for name, agent in ballot.labels.items() if name == "B")
        assert ballot.order[0] == last_shown
        assert ballot.reasons[last_shown] == "reason on B"


def test_a_server_that_refuses_the_schema_is_asked_again_without_it_and_the_run_concludes(
    pipeline: FakeLLMServer,
) -> None:
    pipeline.owned_by = "vllm"
    pipeline.refuses_response_format = True
    pipeline.responder = ballot_answer
    state, result = run(task="t", roles=["DEV", "QA", "ARCHITECT"], rounds=0)
    assert state.is_completed() and isinstance(result, DeliberationResult), result
    assert sorted(body["user"] for body in pipeline.refused) == [
        "agent-architect-001.ranking",
        "agent-dev-001.ranking",
        "agent-qa-001.ranking",
    ]
    assert all(b.abstained is None and len(b.order) == 2 for b in result.ballots)
    assert result.winner is not None


def test_the_context_is_fitted_to_the_smallest_window_the_council_speaks_through(
    pipeline: FakeLLMServer, coder: FakeLLMServer
) -> None:
    coder.max_model_len = 400  # as vLLM's card says it; a quarter: 100 tokens, 400 characters
    pipeline.responder = coder.responder = ballot_answer
    text = "".join(f"line {n:03d}\n" for n in range(200))  # 9 characters a line
    state, result = run(
        task="t",
        roles=["DEV", "QA"],
        endpoints={"QA": "coder"},
        rounds=0,
        context=[{"path": "a.py", "content": text}],
    )
    assert isinstance(result, DeliberationResult), result
    assert any(gap.startswith("context over its budget of 100 tokens") for gap in result.incomplete)
    # One budget for the council: the member on the default server sees the same lines.
    for server in (pipeline, coder):
        [proposal] = [call for call in server.calls if "." not in call.body["user"]]  # bare agent id
        shown = "".join(message["content"] for message in proposal.body["messages"])
        assert "line 043" in shown and "line 044" not in shown

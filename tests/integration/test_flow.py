"""The deliberate flow end to end on real Ray, Prefect's engine and test API, nats-server and
an OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nats
import nats.aio.msg
import pytest
from prefect import get_client
from prefect.blocks.system import Secret
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
    LogFilterTaskRunId,
)
from prefect.client.schemas.objects import TaskRun
from prefect.logging.handlers import APILogWorker
from prefect.states import State

from agents.adapters.nats import RESULTS_BUCKET, EventBus
from agents.errors import ConfigurationError
from agents.events import (
    AGENT_RESPONSE_COMPLETED,
    AGENT_RESPONSE_FAILED,
    DELIBERATION_COMPLETED,
    DELIBERATION_FAILED,
    DELIBERATION_RANKED,
    AgentResponseEvent,
    Event,
)
from agents.models import AgentStatus, DeliberationRequest, DeliberationResult
from agents.settings import bus_config_for
from flows.deliberate import deliberate
from support.agreement import assert_stream_agrees_with_stored_result
from tests.fake_llm import HANG, FakeLLMServer, barrier, ok, status
from tests.nats_jwt import OperatorNatsServer
from tests.service import task_runs_of

pytestmark = pytest.mark.usefixtures("pipeline")
ReadEvents = Callable[[str], list[Event]]


def run(**fields: Any) -> tuple[State[Any], DeliberationResult]:
    fields.setdefault("deliberation_id", uuid.uuid4().hex)
    state = deliberate(request=DeliberationRequest(**fields), return_state=True)
    result = state.result(raise_on_failure=False)
    assert isinstance(result, DeliberationResult), result
    return state, result


def outcome(result: DeliberationResult, agent_id: str) -> Any:
    return next(o for o in result.outcomes if o.agent_id == agent_id)


def events_per_agent(events: list[Event]) -> Counter[str]:
    return Counter(e.agent_id for e in events if isinstance(e, AgentResponseEvent))


def test_all_agents_are_in_flight_at_once(pipeline: FakeLLMServer, read_events: ReadEvents) -> None:
    # Each request is answered only once all five are in flight (or after a minute).
    pipeline.default = barrier(5)
    state, result = run(task="Add rate limiting to the login endpoint", deadline_seconds=120, rounds=0)
    assert state.is_completed()
    assert pipeline.max_in_flight == 5
    assert result.completed == 5 and result.missing == []
    events = read_events(result.deliberation_id)
    assert events_per_agent(events) == {o.agent_id: 1 for o in result.outcomes}
    others = [e.subject for e in events if not isinstance(e, AgentResponseEvent)]
    assert others == [DELIBERATION_RANKED, DELIBERATION_COMPLETED]
    proposal = outcome(result, "agent-data-001").proposal
    assert proposal.content.startswith("Proposal by agent-data-001")
    assert proposal.prompt_tokens > 0 and proposal.completion_tokens > 0


def test_retryable_errors_are_retried_until_success(pipeline: FakeLLMServer, read_events: ReadEvents) -> None:
    # A burst as long as the retries allow: three errors, then the fourth attempt succeeds.
    pipeline.script("agent-dev-001", status(503), status(429), status(502))
    state, result = run(task="t", roles=["DEV"])
    assert state.is_completed()
    dev = outcome(result, "agent-dev-001")
    assert (dev.status, dev.attempts) == (AgentStatus.COMPLETED, 4)
    assert len(pipeline.calls_for("agent-dev-001")) == 4
    events = read_events(result.deliberation_id)
    assert [e.subject for e in events] == [
        AGENT_RESPONSE_COMPLETED,
        DELIBERATION_RANKED,
        DELIBERATION_COMPLETED,
    ]
    assert events[0].attempts == 4  # type: ignore[attr-defined]


def test_each_call_is_a_task_run_whose_states_and_logs_show_each_attempt_and_why(
    pipeline: FakeLLMServer,
) -> None:
    # What the UI shows of a call: its states in order, its attempts, the reasons. The call
    # hosts drive these task runs without Prefect's engine (flows/runtime/task_runs.py).
    pipeline.script("agent-dev-001", status(503))
    pipeline.script("agent-qa-001", status(400))
    state, _ = run(task="t", roles=["DEV", "QA"], quorum=1, rounds=0)
    assert state.is_completed()
    runs = _task_runs_when_final(state, ["agent-dev-001.proposal", "agent-qa-001.proposal"])
    with get_client(sync_client=True) as client:
        dev, qa = runs["agent-dev-001.proposal"], runs["agent-qa-001.proposal"]
        assert [s.name for s in client.read_task_run_states(dev.id)] == [
            "Running",
            "AwaitingRetry",
            "Retrying",
            "Completed",
        ]
        assert dev.run_count == 2 and dev.flow_run_id == state.state_details.flow_run_id
        assert [s.name for s in client.read_task_run_states(qa.id)] == ["Running", "Failed"]
        assert qa.run_count == 1
        assert qa.state is not None and qa.state.message is not None
        assert qa.state.message.startswith("Task run encountered an exception LLMRejected: ")
        give_up = time.monotonic() + 30
        while True:
            dev_logs = [log.message for log in _logs_of(client, dev.id)]
            qa_logs = [log.message for log in _logs_of(client, qa.id)]
            if any("Retry 1/3" in m for m in dev_logs) and any("Finished" in m for m in qa_logs):
                break
            assert time.monotonic() < give_up, (dev_logs, qa_logs)
            time.sleep(0.5)
    assert any(m.startswith("Task run failed with exception: LLMUnavailable(") for m in dev_logs), dev_logs
    assert any("- Retry 1/3 will start" in m for m in dev_logs), dev_logs
    # A completed run's state says it: no "Finished in state Completed()" line.
    assert not any(m.startswith("Finished in state") for m in dev_logs), dev_logs
    assert any(m.startswith("Finished in state Failed(") for m in qa_logs), qa_logs


def _task_runs_when_final(state: State[Any], names: list[str]) -> dict[str, Any]:
    """The flow run's task runs of these names, once the API holds each one final (it learns
    of task-run states through events, a moment after the flow ends)."""

    def final(runs: list[TaskRun]) -> bool:
        done = {r.name for r in runs if r.state is not None and r.state.is_final()}
        return set(names) <= done

    runs = task_runs_of(state.state_details.flow_run_id, until=final, timeout=30)
    return {r.name: r for r in runs if r.name in names}


def test_permanent_error_is_not_retried_and_is_published_as_failed(
    pipeline: FakeLLMServer, read_events: ReadEvents
) -> None:
    pipeline.script("agent-qa-001", status(400))
    state, result = run(task="t", roles=["DEV", "QA"], quorum=1)
    assert state.is_completed()
    qa = outcome(result, "agent-qa-001")
    assert (qa.status, qa.attempts) == (AgentStatus.FAILED, 1)
    assert qa.error.type == "LLMRejected" and qa.error.retryable is False
    assert len(pipeline.calls_for("agent-qa-001")) == 1
    failed = [e for e in read_events(result.deliberation_id) if e.subject == AGENT_RESPONSE_FAILED]
    assert [e.agent_id for e in failed] == ["agent-qa-001"]  # type: ignore[attr-defined]


def test_hang_is_cut_at_the_deadline_and_quorum_decides(
    pipeline: FakeLLMServer, read_events: ReadEvents
) -> None:
    pipeline.script("agent-qa-001", HANG)
    state, result = run(task="t", roles=["DEV", "QA"], quorum=1, deadline_seconds=20)
    assert state.is_completed()
    qa = outcome(result, "agent-qa-001")
    assert qa.status is AgentStatus.TIMED_OUT and qa.error.type == "DeadlineExceeded"
    assert result.missing == ["agent-qa-001"]
    assert "agent-qa-001 (timed out at the deadline)" in result.summary
    # The cancelled task's worker was killed, so its request did not run on.
    assert pipeline.calls_for("agent-qa-001")[0].client_disconnected
    subjects = Counter(e.subject for e in read_events(result.deliberation_id))
    assert subjects == {
        AGENT_RESPONSE_COMPLETED: 1,
        AGENT_RESPONSE_FAILED: 1,
        DELIBERATION_RANKED: 1,
        DELIBERATION_COMPLETED: 1,
    }


def test_timed_out_attempt_stops_its_request_and_is_retried(
    pipeline: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, read_events: ReadEvents
) -> None:
    # Not shorter: an attempt also acquires its concurrency slot, and the test harness's
    # SQLite API can answer that with a 503 that Prefect's client waits 2 s to retry.
    monkeypatch.setenv("DELIBERATION_ATTEMPT_TIMEOUT_SECONDS", "6")
    pipeline.script("agent-dev-001", HANG)
    state, result = run(task="t", roles=["DEV"], deadline_seconds=60)
    assert state.is_completed()
    dev = outcome(result, "agent-dev-001")
    assert (dev.status, dev.attempts) == (AgentStatus.COMPLETED, 2)
    first, second = pipeline.calls_for("agent-dev-001")
    assert first.client_disconnected
    assert first.ended is not None and first.ended <= second.started
    assert events_per_agent(read_events(result.deliberation_id)) == {"agent-dev-001": 1}


def test_quorum_not_met_fails_the_run_and_publishes_deliberation_failed(
    pipeline: FakeLLMServer, read_events: ReadEvents
) -> None:
    pipeline.script("agent-qa-001", status(401))
    state, result = run(task="t", roles=["DEV", "QA"])
    assert state.is_failed()
    assert "1 of 2 proposals (quorum 2) not met" in result.summary
    # A missed quorum is decided: retrying could change nothing, so the run is not retried.
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(state.state_details.flow_run_id).run_count == 1
    assert len(pipeline.calls_for("agent-qa-001")) == 1
    assert outcome(result, "agent-qa-001").status is AgentStatus.FAILED
    events = read_events(result.deliberation_id)
    assert [
        e.status for e in events if isinstance(e, AgentResponseEvent) and e.agent_id == "agent-qa-001"
    ] == [AgentStatus.FAILED]
    subjects = [e.subject for e in events]
    assert subjects.count(DELIBERATION_FAILED) == 1 and DELIBERATION_COMPLETED not in subjects


def test_a_run_that_finds_the_model_server_away_is_retried_by_prefect_in_the_same_flow_run(
    pipeline: FakeLLMServer, read_events: ReadEvents
) -> None:
    # The model server answers 503 to the run's first check, then is back.
    pipeline.script_models(503)
    request = DeliberationRequest(task="t", roles=["DEV"], deliberation_id=uuid.uuid4().hex)
    state = deliberate.with_options(retry_delay_seconds=0.5)(request=request, return_state=True)
    assert state.is_completed(), state
    with get_client(sync_client=True) as client:
        flow_run_id = state.state_details.flow_run_id
        assert client.read_flow_run(flow_run_id).run_count == 2
        history = client.read_flow_run_states(flow_run_id)
    # What the UI shows: the retry scheduled, with the failure that asked for it, then a run.
    assert [s.name for s in history] == ["Pending", "Running", "AwaitingRetry", "Running", "Completed"]
    assert "Unreachable" in str(history[2].message) and "answered 503" in str(history[2].message)
    assert len(pipeline.calls_for("agent-dev-001")) == 1
    assert events_per_agent(read_events(request.deliberation_id or "")) == {"agent-dev-001": 1}


@pytest.mark.parametrize("runs_before", [0, 1], ids=["on-the-first-run", "on-a-retry"])
def test_a_decided_failure_raised_in_the_run_is_not_retried(
    pipeline: FakeLLMServer, runs_before: int
) -> None:
    # `runs_before` runs meet the server away (each retried); the next finds the model unknown.
    pipeline.script_models(*[503] * runs_before)
    request = DeliberationRequest(task="t", roles=["DEV"], model="no-such-model")
    state = deliberate.with_options(retry_delay_seconds=0.5)(request=request, return_state=True)
    assert state.is_failed()
    assert "model 'no-such-model' is not served" in str(state.message)
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(state.state_details.flow_run_id).run_count == runs_before + 1


def test_rerun_with_the_same_deliberation_id_reuses_proposals_and_publishes_nothing_twice(
    pipeline: FakeLLMServer, read_events: ReadEvents, nats_url: str
) -> None:
    deliberation_id = uuid.uuid4().hex
    first_state, first = run(task="t", roles=["DEV", "QA"], deliberation_id=deliberation_id)
    calls_after_first = len(pipeline.calls)
    second_state, second = run(task="t", roles=["DEV", "QA"], deliberation_id=deliberation_id)
    assert first_state.is_completed() and second_state.is_completed()
    # Proposals, critiques and revisions: nothing is asked twice.
    assert len(pipeline.calls) == calls_after_first == 6
    assert [o.proposal for o in second.outcomes] == [o.proposal for o in first.outcomes]
    events = read_events(deliberation_id)
    assert events_per_agent(events) == {"agent-dev-001": 1, "agent-qa-001": 1}
    # 2 agents, 2 critiques, the ranking, the verdict: each once.
    assert Counter(e.msg_id for e in events) == {e.msg_id: 1 for e in events} and len(events) == 6
    assert assert_stream_agrees_with_stored_result(nats_url, deliberation_id) == second


def test_a_rerun_of_a_concluded_deliberation_announces_it_to_no_subscriber_again(
    pipeline: FakeLLMServer, nats_url: str
) -> None:
    deliberation_id = uuid.uuid4().hex
    run(task="t", roles=["DEV"], rounds=0, deliberation_id=deliberation_id)
    with plain_subscriber(nats_url, deliberation_id) as seen:
        state, _ = run(task="t", roles=["DEV"], rounds=0, deliberation_id=deliberation_id)
    assert state.is_completed()
    # JetStream drops a second copy from the stream; a plain subscriber would still get it.
    assert seen == []

    # A run that stored its result and died before announcing it: the next run announces it.
    async def forget_the_announcement() -> None:
        nc = await nats.connect(nats_url)
        try:
            results = await nc.jetstream().key_value(RESULTS_BUCKET)
            await results.delete(f"{deliberation_id}.announced")
        finally:
            await nc.close()

    asyncio.run(forget_the_announcement())
    with plain_subscriber(nats_url, deliberation_id) as seen:
        run(task="t", roles=["DEV"], rounds=0, deliberation_id=deliberation_id)
    assert seen == [DELIBERATION_COMPLETED]


@contextmanager
def plain_subscriber(url: str, deliberation_id: str) -> Iterator[list[str]]:
    """The subjects of this deliberation's messages a plain (core NATS) subscriber to the
    event subjects gets meanwhile."""
    seen: list[str] = []
    ready, stop = threading.Event(), threading.Event()

    async def listen() -> None:
        nc = await nats.connect(url)
        try:

            async def on_message(msg: nats.aio.msg.Msg) -> None:
                with contextlib.suppress(ValueError, AttributeError):
                    if json.loads(msg.data).get("deliberation_id") == deliberation_id:
                        seen.append(msg.subject)

            for subjects in ("deliberation.>", "agent.>"):
                await nc.subscribe(subjects, cb=on_message)
            await nc.flush()
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            await nc.flush()
        finally:
            await nc.close()

    listener = threading.Thread(target=asyncio.run, args=(listen(),), daemon=True)
    listener.start()
    assert ready.wait(10), "the subscriber did not connect"
    try:
        yield seen
    finally:
        time.sleep(0.5)  # what was published is delivered by now
        stop.set()
        listener.join(10)


def test_invalid_parameters_are_rejected_before_anything_is_published(
    pipeline: FakeLLMServer, read_events: ReadEvents
) -> None:
    deliberation_id = uuid.uuid4().hex
    state = deliberate(
        request={"task": "t", "roles": ["DEV", "CEO"], "deliberation_id": deliberation_id},
        return_state=True,
    )
    assert state.is_failed()
    assert "unknown role 'CEO'" in str(state.message)
    assert pipeline.calls == []
    assert read_events(deliberation_id) == []


def test_llm_calls_hold_slots_of_a_named_global_concurrency_limit(
    pipeline: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = f"llm-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("DELIBERATION_LLM_CONCURRENCY_LIMIT", limit)
    monkeypatch.setenv("DELIBERATION_LLM_CONCURRENCY", "1")
    pipeline.default = ok(delay=1.0)
    state, result = run(task="t", roles=["DEV", "QA", "DATA"], rounds=0)
    assert state.is_completed() and result.completed == 3
    assert pipeline.max_in_flight == 1
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(limit).limit == 1


def test_an_existing_limit_keeps_its_size_unless_the_setting_is_given(
    pipeline: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = f"llm-test-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=2))
    monkeypatch.setenv("DELIBERATION_LLM_CONCURRENCY_LIMIT", limit)
    pipeline.default = barrier(3)  # answers early only if all three get a slot at once
    pipeline.barrier_timeout = 3.0
    state, _ = run(task="t", roles=["DEV", "QA", "DATA"], rounds=0)
    assert state.is_completed()
    assert pipeline.max_in_flight == 2  # the operator's size stands
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(limit).limit == 2

    monkeypatch.setenv("DELIBERATION_LLM_CONCURRENCY", "3")
    pipeline.max_in_flight = 0
    state, _ = run(task="t", roles=["DEV", "QA", "DATA"], rounds=0)
    assert state.is_completed()
    assert pipeline.max_in_flight == 3  # the setting took effect
    assert f"concurrency limit '{limit}' resized from 2 to 3 slots" in flow_run_messages(state)
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(limit).limit == 3


def flow_run_messages(state: State[Any]) -> list[str]:
    APILogWorker.drain_all(timeout=10)  # logs are sent in batches, after the run returns
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    return [log.message for log in logs]


def test_a_small_council_runs_on_one_call_host_unless_the_calls_in_flight_need_more(
    pipeline: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline.default = barrier(3)  # answers early only if all three are in flight at once
    pipeline.barrier_timeout = 3.0
    state, _ = run(task="t", roles=["DEV", "QA", "DATA"], rounds=0)
    assert state.is_completed() and pipeline.max_in_flight == 3
    assert "model calls on 1 of up to 2 call hosts (stages of up to 3 calls)" in flow_run_messages(state)

    # One slot per host: three calls need both hosts, and two are in flight at most.
    monkeypatch.setenv("DELIBERATION_LLM_CONCURRENCY", "2")
    pipeline.max_in_flight = 0
    state, _ = run(task="t", roles=["DEV", "QA", "DATA"], rounds=0)
    assert state.is_completed() and pipeline.max_in_flight == 2
    assert "model calls on 2 of up to 2 call hosts (stages of up to 3 calls)" in flow_run_messages(state)


def test_api_key_from_a_secret_block_is_sent_and_appears_nowhere_else(
    pipeline: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, read_events: ReadEvents
) -> None:
    secret = f"sk-{uuid.uuid4().hex}"
    block = f"vllm-key-{uuid.uuid4().hex[:8]}"
    Secret(value=secret).save(block)
    monkeypatch.setenv("DELIBERATION_VLLM_API_KEY_SECRET", block)
    state, result = run(task="t", roles=["DEV", "QA"])
    assert state.is_completed(), [o.error for o in result.outcomes]
    assert [c.headers["authorization"] for c in pipeline.calls] == [f"Bearer {secret}"] * 6
    events = read_events(result.deliberation_id)
    seen = _everything_said(state, result, events)
    assert not [text for text in seen if secret in text]


def _everything_said(state: State[Any], result: DeliberationResult, events: list[Event]) -> list[str]:
    """The result, the events, the flow-run record, its logs and artifacts, as text."""
    APILogWorker.drain_all(timeout=10)  # logs are sent in batches, after the run returns
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        )
    assert logs and len(artifacts) == 2  # what is searched is really there
    seen = [result.model_dump_json(), flow_run.model_dump_json(), *(e.model_dump_json() for e in events)]
    return seen + [log.message for log in logs] + [artifact.model_dump_json() for artifact in artifacts]


def test_nats_creds_file_is_used_and_its_secrets_appear_nowhere(
    pipeline: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with OperatorNatsServer(tmp_path) as nats:
        monkeypatch.setenv("NATS_URL", nats.url)
        monkeypatch.setenv("NATS_CREDS", str(nats.setup.creds))
        state, result = run(task="t", roles=["DEV", "QA"], rounds=0)
        assert state.is_completed()
        with EventBus.connect(bus_config_for(nats.url, creds_file=nats.setup.creds)) as bus:
            events = bus.read_events(result.deliberation_id)
            assert bus.load_result(result.deliberation_id) == result
    assert len(events) == 4
    secrets = [nats.setup.user_seed, nats.setup.user_jwt.split(".")[2]]
    assert not [s for s in secrets for text in _everything_said(state, result, events) if s in text]


def test_a_missing_secret_block_is_a_configuration_error(
    pipeline: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DELIBERATION_VLLM_API_KEY_SECRET", "no-such-block")
    state = deliberate(request=DeliberationRequest(task="t", roles=["DEV"]), return_state=True)
    assert state.is_failed()
    assert isinstance(state.result(raise_on_failure=False), ConfigurationError)
    assert pipeline.calls == []


def test_retry_after_is_honoured_before_the_next_attempt(pipeline: FakeLLMServer) -> None:
    pipeline.script("agent-dev-001", status(429, retry_after="2"))
    state, result = run(task="t", roles=["DEV"])
    assert state.is_completed()
    first, second = pipeline.calls_for("agent-dev-001")
    assert first.ended is not None
    # The configured backoff here is 0.2 s; the gap comes from the server's Retry-After.
    assert second.started - first.ended >= 2.0


def test_a_call_cut_at_the_deadline_says_why_and_gives_its_slot_back_at_once(
    pipeline: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = f"llm-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("DELIBERATION_LLM_CONCURRENCY_LIMIT", limit)
    pipeline.script("agent-qa-001", HANG)
    state, result = run(task="t", roles=["DEV", "QA"], quorum=1, rounds=0, deadline_seconds=10)
    assert state.is_completed()
    with get_client(sync_client=True) as client:
        # Read right after the run: the slot came back with the cancellation, not a lease expiry.
        assert client.read_global_concurrency_limit_by_name(limit).active_slots == 0
        # Its task run reaches the API as events, a moment after the flow run ends.
        [qa] = _task_runs_when_final(state, ["agent-qa-001.proposal"]).values()
        # The host's engine logs its end on its own time: wait for that line.
        give_up = time.monotonic() + 30
        logs = _logs_of(client, qa.id)
        while not any("Finished in state" in log.message for log in logs):
            assert time.monotonic() < give_up, [log.message for log in logs]
            time.sleep(0.5)
            logs = _logs_of(client, qa.id)
    assert qa.state is not None and qa.state.type == "CANCELLED"
    assert qa.state.message == "deadline of 10 s reached"
    assert "cancelled: deadline of 10 s reached; its request to the model server was dropped" in [
        log.message for log in logs
    ]
    # A call stopped on purpose is no crash. Prefect logs any end but Completed at ERROR;
    # which Cancelled the host's engine logs, its own or the flow's, depends on which state
    # reached the API first (seen both ways under load), and either is no crash.
    errors = [log.message for log in logs if log.level >= logging.ERROR]
    assert all(message.startswith("Finished in state Cancelled(") for message in errors), errors
    assert not any("Crash" in log.message for log in logs), [log.message for log in logs]


def _logs_of(client: Any, task_run_id: uuid.UUID) -> list[Any]:
    return list(client.read_logs(LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id]))))


def test_the_ui_shows_the_summary_and_keyed_artifacts_with_the_settings(pipeline: FakeLLMServer) -> None:
    pipeline.script("agent-qa-001", status(400))
    state, result = run(task="t", task_id="Login_Rate-Limit", roles=["DEV", "QA"], quorum=1, rounds=0)
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        )
    assert flow_run.state is not None and flow_run.state.message == result.summary
    assert "agent-qa-001 (failed: LLMRejected)" in result.summary
    keys = {artifact.key: artifact for artifact in artifacts}
    assert set(keys) == {"deliberation-login-rate-limit", "deliberation-login-rate-limit-agents"}
    report = str(keys["deliberation-login-rate-limit"].data)
    assert "## Settings" in report and "| deadline | 120 s" in report
    assert "| quorum | 1 of 2 proposals |" in report

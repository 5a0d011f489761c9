"""Living beside other services on shared NATS subjects, and reruns whose stored result and
stream agree: real nats-server, Ray, Prefect's engine and the fake model server."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agents.adapters.nats import EventBus
from agents.errors import ConfigurationError
from agents.events import (
    Event,
)
from agents.models import AgentStatus, DeliberationRequest, DeliberationResult, Stage, StageCall
from agents.settings import bus_config_for
from flows.deliberate import deliberate
from flows.runtime.embedded import LocalNatsServer
from support.agreement import assert_stream_agrees_with_stored_result
from tests.factories import FOREIGN_PROPOSAL
from tests.fake_llm import HANG, FakeLLMServer

ROOT = Path(__file__).resolve().parents[2]
ReadEvents = Callable[[str], list[Event]]


def _publish_raw(nats_url: str, subject: str, payload: bytes) -> None:
    """What another service on the shared subjects might publish: no schema of ours."""

    async def send(nc: Any) -> None:
        await nc.jetstream().publish(subject, payload)

    _with_nats(nats_url, send)


def _put_raw(nats_url: str, bucket: str, key: str, value: bytes) -> None:
    async def put(nc: Any) -> None:
        await (await nc.jetstream().key_value(bucket)).put(key, value)

    _with_nats(nats_url, put)


def _with_nats(nats_url: str, use: Callable[[Any], Any]) -> None:
    import asyncio

    import nats

    async def run() -> None:
        nc = await nats.connect(nats_url)
        try:
            await use(nc)
        finally:
            await nc.close()

    asyncio.run(run())


@pytest.mark.usefixtures("pipeline")
def test_foreign_and_malformed_messages_on_the_shared_subjects_do_not_disturb_a_deliberation(
    nats_url: str, read_events: ReadEvents
) -> None:
    deliberation_id = uuid.uuid4().hex
    with EventBus.connect(bus_config_for(nats_url)):
        pass  # the streams exist, as they do wherever other services publish
    newer_schema = {"schema_version": 2, "deliberation_id": deliberation_id, "agent_id": "agent-dev-001"}
    _publish_raw(nats_url, "agent.response.completed", json.dumps(FOREIGN_PROPOSAL).encode())
    _publish_raw(nats_url, "agent.response.completed", json.dumps(newer_schema).encode())
    _publish_raw(nats_url, "agent.response.failed", b'{"error": "boom"}')
    _publish_raw(nats_url, "deliberation.completed", b"not json at all")

    state = deliberate(
        request=DeliberationRequest(task="t", roles=["DEV", "QA"], rounds=0, deliberation_id=deliberation_id),
        return_state=True,
    )

    assert state.is_completed(), state.message
    events = read_events(deliberation_id)  # the newer-schema message names this id: skipped
    assert sorted(e.subject for e in events) == [
        "agent.response.completed",
        "agent.response.completed",
        "deliberation.completed",
        "deliberation.ranked",
    ]
    assert_stream_agrees_with_stored_result(nats_url, deliberation_id)


def test_the_ledger_reads_this_deliberations_records_only_and_skips_unreadable_ones(nats_url: str) -> None:
    ours = uuid.uuid4().hex
    started = datetime.now(UTC)
    call = StageCall(call_id="agent-dev-001", stage=Stage.PROPOSAL, agent_id="agent-dev-001", status="failed")
    with EventBus.connect(bus_config_for(nats_url)) as bus:
        for _ in range(100):  # other deliberations, before and after ours
            other = uuid.uuid4().hex
            bus.open_ledger(other, "x", started)
            bus.record_calls(
                other, [call.model_copy(update={"call_id": f"agent-dev-{index:03d}"}) for index in range(3)]
            )
        assert bus.open_ledger(ours, "digest", started).calls == {}
        bus.record_calls(ours, [call, call.model_copy(update={"call_id": "agent-qa-001"})])
    # Someone else's write under our prefix: not a call record.
    _put_raw(nats_url, "DELIBERATION_CALLS", f"{ours}.junk", b"{}")
    with EventBus.connect(bus_config_for(nats_url)) as bus:
        ledger = bus.open_ledger(ours, "digest", started + timedelta(hours=1))

    assert ledger.started_at == started  # the first start stands
    assert set(ledger.calls) == {"agent-dev-001", "agent-qa-001"}
    assert ledger.unreadable == 1


def test_a_deliberation_id_reused_for_another_request_is_refused(nats_url: str) -> None:
    deliberation_id = uuid.uuid4().hex
    with EventBus.connect(bus_config_for(nats_url)) as bus:
        bus.open_ledger(deliberation_id, "one request", datetime.now(UTC))
        with pytest.raises(ConfigurationError, match="started with a different request"):
            bus.open_ledger(deliberation_id, "another request", datetime.now(UTC))


def test_a_resumed_deliberation_keeps_its_first_deadline(pipeline: FakeLLMServer, nats_url: str) -> None:
    # As if a first run had started 100 s ago and died before asking anything.
    request = DeliberationRequest(
        task="t", roles=["DEV", "QA"], rounds=0, deadline_seconds=60, deliberation_id=uuid.uuid4().hex
    )
    with EventBus.connect(bus_config_for(nats_url)) as bus:
        bus.open_ledger(
            request.deliberation_id or "", request.digest(), datetime.now(UTC) - timedelta(seconds=100)
        )
    state = deliberate(request=request, return_state=True)
    result = state.result(raise_on_failure=False)
    assert state.is_failed() and isinstance(result, DeliberationResult)
    assert [o.status for o in result.outcomes] == [AgentStatus.TIMED_OUT] * 2
    assert pipeline.calls == []  # the deadline had passed: nothing was asked
    assert_stream_agrees_with_stored_result(nats_url, result.deliberation_id)


def test_a_rerun_after_timeouts_repeats_nothing_and_agrees_with_the_stream(
    pipeline: FakeLLMServer, nats_url: str
) -> None:
    pipeline.script("agent-qa-001", HANG)
    request = DeliberationRequest(
        task="t", roles=["DEV", "QA", "DATA"], quorum=2, deadline_seconds=15, deliberation_id=uuid.uuid4().hex
    )
    first = deliberate(request=request, return_state=True)
    assert first.is_completed(), first.message
    calls = len(pipeline.calls)
    stored = assert_stream_agrees_with_stored_result(nats_url, request.deliberation_id or "")

    again = deliberate(request=request, return_state=True)  # a rerun by id, with QA now healthy

    assert again.is_completed() and again.result() == stored
    assert len(pipeline.calls) == calls  # the timed-out call is final: not asked again
    assert_stream_agrees_with_stored_result(nats_url, request.deliberation_id or "")


@pytest.mark.slow
def test_a_stream_whose_settings_cannot_change_is_one_line_and_exit_2(fake_llm: FakeLLMServer) -> None:
    with LocalNatsServer() as nats:
        with EventBus.connect(bus_config_for(nats.url, stream_storage="memory")):
            pass  # created in memory by someone else; this run asks for file storage
        proc = subprocess.run(
            [sys.executable, "-m", "flows.deliberate", "t", "--roles", "DEV"],
            cwd=ROOT,
            env={**_env(), "VLLM_URL": fake_llm.url, "NATS_URL": nats.url},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "stream AGENT_RESPONSES exists with settings" in lines[0], lines
    assert fake_llm.calls == []


def _env() -> dict[str, Any]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("DELIBERATION_STREAM", "PREFECT_API"))}

"""Cancelling a running deliberation from Prefect (what the UI's Cancel does: the flow run
goes to Cancelling), against real Ray, Prefect, nats-server and a model server that holds
every proposal: the calls in flight are dropped at the server, the deliberation concludes
cancelled, stored and announced once, and the flow run ends Cancelled."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.states import Cancelling, State

from agents.events import DeliberationEvent, Event
from agents.models import DeliberationRequest, DeliberationResult, DeliberationStatus
from flows.deliberate import deliberate
from support.agreement import assert_stream_agrees_with_stored_result
from tests.fake_llm import HANG, FakeLLMServer
from tests.waiting import wait_until


def test_a_deliberation_cancelled_in_prefect_drops_its_calls_and_concludes_cancelled(
    pipeline: FakeLLMServer, nats_url: str, read_events: Callable[[str], list[Event]]
) -> None:
    # DEV answers at once (its proposal stands); QA and DATA are held until cancelled.
    for agent in ("agent-qa-001", "agent-data-001"):
        pipeline.script(agent, HANG)
    request = DeliberationRequest(
        task="t",
        task_id=f"cancel-{uuid.uuid4().hex[:8]}",
        roles=["DEV", "QA", "DATA"],
        deliberation_id=uuid.uuid4().hex,
    )
    states: list[State[Any]] = []
    thread = threading.Thread(target=lambda: states.append(deliberate(request=request, return_state=True)))
    thread.start()
    wait_until(lambda: sum(1 for c in pipeline.calls if c.agent != "agent-dev-001") == 2, timeout=120)

    with get_client(sync_client=True) as client:
        [flow_run] = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=request.task_id))
        )
        client.set_flow_run_state(flow_run.id, Cancelling(message="cancelled from the UI"), force=True)
    thread.join(timeout=60)
    assert not thread.is_alive()

    [state] = states
    result = state.result(raise_on_failure=False)
    assert isinstance(result, DeliberationResult), result
    assert state.is_cancelled(), state
    assert result.status is DeliberationStatus.CANCELLED
    assert [o.agent_id for o in result.outcomes if o.proposal] == ["agent-dev-001"]
    assert result.summary.startswith("cancelled (cancelled from the UI)")
    held = [c for c in pipeline.calls if c.agent in ("agent-qa-001", "agent-data-001")]
    wait_until(lambda: all(c.client_disconnected for c in held), timeout=10)  # as the server saw it
    assert len(held) == 2

    stored = assert_stream_agrees_with_stored_result(nats_url, request.deliberation_id or "")
    assert stored.status is DeliberationStatus.CANCELLED
    finals = [e for e in read_events(request.deliberation_id or "") if isinstance(e, DeliberationEvent)]
    assert [e.subject for e in finals] == ["deliberation.cancelled"]

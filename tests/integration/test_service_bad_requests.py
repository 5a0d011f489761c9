"""Requests the deliberation service must outlast: one that fails in the flow on every try
(a poison), and garbage on its endpoints and its intake while another service uses the
same nats-server. The service runs in this process (tests.service), on a nats-server of its
own, real Ray, Prefect's engine and a fake model server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import nats
import pytest

from agents.adapters.nats import EventBus
from agents.adapters.nats.intake import INTAKE_STREAM, RUNNERS
from agents.events import DeliberationProgressEvent
from agents.settings import bus_config_for
from tests.agreement import assert_each_concluded_once
from tests.fake_llm import FakeLLMServer
from tests.service import Service, running_service

MAX_TRIES = 2
# Over nats-server's default max_payload (1 MiB): the call's record cannot be stored.
OVERSIZED_ANSWER = "x" * (1024 * 1024 + 1)


@pytest.fixture
def service(fake_llm: FakeLLMServer, ray_cluster: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    monkeypatch.setenv("DELIBERATION_SERVICE_MAX_TRIES", str(MAX_TRIES))
    with running_service(fake_llm, monkeypatch) as running:
        yield running


def _events(url: str, deliberation_id: str) -> list[Any]:
    with EventBus.connect(bus_config_for(url)) as bus:
        return bus.read_events(deliberation_id)


def _runners_backlog(url: str) -> tuple[int, int]:
    """The runners' consumer: requests not yet delivered, and delivered but not acked."""

    async def read() -> tuple[int, int]:
        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().consumer_info(INTAKE_STREAM, RUNNERS)
            return info.num_pending or 0, info.num_ack_pending or 0
        finally:
            await nc.close()

    return asyncio.run(read())


def test_a_request_that_fails_in_the_flow_every_time_ends_failed_after_its_tries_and_is_acked(
    service: Service,
) -> None:
    # A model server that ignores max_tokens for one task: its answer is too large to
    # record in the call ledger, so every run of the flow raises (an EventBusError, not a
    # decided ConfigurationError) and the request is tried again, up to MAX_TRIES.
    service.llm.responder = lambda body: OVERSIZED_ANSWER if "poison" in str(body["messages"]) else None
    poison = service.answer("submit", {"task": "poison", "roles": ["DEV"], "rounds": 0})["deliberation_id"]
    fine = service.answer("submit", {"task": "fine", "roles": ["DEV"], "rounds": 0})["deliberation_id"]

    # Generous: a flow-level retry inside a try would add its retry delay.
    done = service.wait_for(poison, "failed", timeout=150)
    assert service.wait_for(fine, "completed")["result"]["completed"] == 1
    assert done["reason"].startswith(f"try {MAX_TRIES}: "), done["reason"]
    assert done["result"]["status"] == "failed"
    progress = [e for e in _events(service.url, poison) if isinstance(e, DeliberationProgressEvent)]
    started = [e for e in progress if e.status == "started"]
    assert [e.attempt for e in started] == list(range(1, MAX_TRIES + 1))
    assert service.stream_messages(INTAKE_STREAM) == 0 and _runners_backlog(service.url) == (0, 0)
    assert_each_concluded_once(service.url, [poison, fine])

    # Its answer was never recorded (recording it is what fails), so each run of the flow
    # asked it anew, once: as many calls as runs, counting any flow-level retry.
    from prefect import get_client

    with get_client(sync_client=True) as client:
        runs = sum(client.read_flow_run(uuid.UUID(e.flow_run_id or "")).run_count for e in started)
    poisoned = [c for c in service.llm.calls if "poison" in str(c.body["messages"])]
    assert len(poisoned) == runs
    assert all("poison" in str(c.body["messages"]) for c in service.llm.asked_again())

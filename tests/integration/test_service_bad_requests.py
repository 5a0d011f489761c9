"""Requests the deliberation service must outlast: one that fails in the flow on every try
(a poison), and garbage on its endpoints and its intake while another service uses the
same nats-server. The service runs in this process (tests.service), on a nats-server of its
own, real Ray, Prefect's engine and a fake model server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any

import nats
import nats.micro
import pytest

from agents.adapters.nats import EventBus
from agents.adapters.nats.intake import INTAKE_STREAM, INTAKE_SUBJECT, RUNNERS
from agents.events import DeliberationProgressEvent
from agents.service import ENDPOINTS, MAX_PAYLOAD_BYTES
from agents.settings import bus_config_for
from support.agreement import assert_each_concluded_once
from tests.fake_llm import FakeLLMServer, ok
from tests.service import ERROR, ERROR_CODE, Service, request, running_service
from tests.waiting import wait_until

MAX_TRIES = 2
# Over nats-server's default max_payload (1 MiB): the call's record cannot be stored.
OVERSIZED_ANSWER = "x" * (1024 * 1024 + 1)


@pytest.fixture
def service(fake_llm: FakeLLMServer, ray_cluster: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    """The service (tests.service), with MAX_TRIES runs of a request before it fails."""
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
    service.wait_until_acked()
    assert _runners_backlog(service.url) == (0, 0)
    assert_each_concluded_once(service.url, [poison, fine])

    # Its answer was never recorded (recording it is what fails), so each run of the flow
    # asked it anew, once: as many calls as runs, counting any flow-level retry.
    from prefect import get_client

    with get_client(sync_client=True) as client:
        runs = sum(client.read_flow_run(uuid.UUID(e.flow_run_id or "")).run_count for e in started)
    poisoned = [c for c in service.llm.calls if "poison" in str(c.body["messages"])]
    assert len(poisoned) == runs
    assert all("poison" in str(c.body["messages"]) for c in service.llm.asked_again())


class OrdersService:
    """Another team's service on the same nats-server, on a thread of its own: the streams
    ORDERS (`orders.>`) and AUDIT (`deliberation-audit.>`, a near miss of our
    `deliberation.*` and `deliberation-intake.>`), and a micro service `orders` whose
    endpoint shop.orders.place stores each order in both (its subject outside its streams,
    or JetStream would ack the request before the service answered)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._nc: nats.NATS | None = None
        self._micro: nats.micro.Service | None = None

    def __enter__(self) -> OrdersService:
        self._thread.start()
        self._call(self._start())
        return self

    def __exit__(self, *_: object) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    async def _start(self) -> None:
        self._nc = await nats.connect(self.url)
        js = self._nc.jetstream()
        await js.add_stream(name="ORDERS", subjects=["orders.>"])
        await js.add_stream(name="AUDIT", subjects=["deliberation-audit.>"])

        async def place(request: nats.micro.Request) -> None:
            order = json.loads(request.data)["order"]
            await js.publish(f"orders.placed.{order}", request.data)
            await js.publish(f"deliberation-audit.orders.{order}", request.data)
            await request.respond(json.dumps({"placed": order}).encode())

        self._micro = await nats.micro.add_service(self._nc, name="orders", version="1.0.0")
        await self._micro.add_endpoint(name="place", subject="shop.orders.place", handler=place)

    async def _stop(self) -> None:
        if self._micro is not None:
            await self._micro.stop()
        if self._nc is not None:
            await self._nc.close()


def _stored(url: str, stream: str) -> list[tuple[str, bytes]]:
    """Every message in `stream`, as (subject, data), in order."""

    async def read() -> list[tuple[str, bytes]]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            last = (await js.stream_info(stream)).state.last_seq
            messages = [await js.get_msg(stream, seq) for seq in range(1, last + 1)]
            return [(m.subject or "", m.data or b"") for m in messages]
        finally:
            await nc.close()

    return asyncio.run(read())


def _publish(url: str, subject: str, data: bytes) -> None:
    async def publish() -> None:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().publish(subject, data)
        finally:
            await nc.close()

    asyncio.run(publish())


GARBAGE = {
    "not JSON": b"\xff\xfe{not json",
    "JSON of the wrong shape": b"[1, 2, 3]",
    "the wrong fields": b'{"order": 7, "deliberation_id": 42}',
    "oversized": b'{"task": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}',
    "empty": b"",
}
# On our intake subject, from someone else: none is a request the submit endpoint stores.
INTAKE_GARBAGE = {
    "not-json": b"\x00garbage",
    "wrong-shape": b'{"order": 7}',
    "no-id": b'{"task": "t", "roles": ["DEV"]}',
}


@pytest.fixture
def dropped() -> Iterator[list[str]]:
    """The service's log lines about messages it dropped, while the test runs."""
    lines: list[str] = []

    class Dropped(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "dropped" in (line := record.getMessage()):
                lines.append(line)

    handler = Dropped()
    logger = logging.getLogger("prefect.deliberation")  # flows.service's logger
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def test_garbage_on_the_endpoints_and_the_intake_and_another_service_beside_change_nothing(
    service: Service, dropped: list[str]
) -> None:
    orders = [{"order": n, "item": f"widget {n}"} for n in range(5)]
    with OrdersService(service.url):
        service.llm.script("agent-qa-001", ok(delay=8))  # running through all that follows
        deliberation_id = service.answer("submit", {"task": "t", "roles": ["DEV", "QA"], "rounds": 0})[
            "deliberation_id"
        ]
        service.wait_for(deliberation_id, "running")
        for order in orders:
            assert json.loads(request(service.url, "shop.orders.place", json.dumps(order).encode()).data) == {
                "placed": order["order"]
            }
        _publish(service.url, "deliberation-audit.note", b"audited while a deliberation ran")

        for endpoint in ENDPOINTS:
            for what, payload in GARBAGE.items():
                reply = service.ask(f"deliberation.{endpoint}", payload)
                assert reply.headers is not None and reply.headers[ERROR_CODE] == "400", (endpoint, what)
                assert "\n" not in reply.headers[ERROR]
        assert service.answer("get", {"deliberation_id": deliberation_id})["status"] == "running"
        for name, data in INTAKE_GARBAGE.items():
            _publish(service.url, f"{INTAKE_SUBJECT}.{name}", data)
        wait_until(lambda: len(dropped) == len(INTAKE_GARBAGE), 30)

        done = service.wait_for(deliberation_id, "completed")
        stats = json.loads(request(service.url, "$SRV.STATS.orders", b"").data)

    assert done["result"]["completed"] == 2
    assert_each_concluded_once(service.url, [deliberation_id])
    assert service.llm.asked_again() == [] and len(service.llm.calls) == 2
    # The intake garbage was dropped: said so, terminated (gone from the work queue), and
    # no deliberation of it exists.
    assert sorted(line.split()[0] for line in dropped) == sorted(
        f"{INTAKE_SUBJECT}.{n}" for n in INTAKE_GARBAGE
    )
    service.wait_until_acked()
    assert _runners_backlog(service.url) == (0, 0)
    for name in INTAKE_GARBAGE:
        unknown = service.ask("deliberation.get", {"deliberation_id": name})
        assert unknown.headers is not None and unknown.headers[ERROR_CODE] == "404"
    # The other service's messages are all there, as sent, and only there.
    placed = [json.dumps(order).encode() for order in orders]
    assert _stored(service.url, "ORDERS") == [(f"orders.placed.{n}", d) for n, d in enumerate(placed)]
    assert _stored(service.url, "AUDIT") == [
        *((f"deliberation-audit.orders.{n}", d) for n, d in enumerate(placed)),
        ("deliberation-audit.note", b"audited while a deliberation ran"),
    ]
    [place] = stats["endpoints"]
    assert (place["num_requests"], place["num_errors"]) == (len(orders), 0)

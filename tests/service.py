"""The deliberation service for tests: run in this process on a nats-server of its own, as
`python -m flows.service` runs it, with helpers to call it as any NATS client would."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from prefect.client.schemas.objects import FlowRun, TaskRun

from agents.adapters.nats.intake import INTAKE_STREAM
from agents.settings import Settings
from flows.runtime.embedded import LocalNatsServer
from flows.service import serve
from tests.fake_llm import FakeLLMServer
from tests.waiting import wait_until

ERROR_CODE = "Nats-Service-Error-Code"
ERROR = "Nats-Service-Error"


@dataclass
class Service:
    url: str
    llm: FakeLLMServer

    def ask(self, endpoint: str, payload: Any, timeout: float = 10.0) -> Msg:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return request(self.url, endpoint, data, timeout)

    def answer(self, endpoint: str, payload: Any) -> dict[str, Any]:
        reply = self.ask(f"deliberation.{endpoint}", payload)
        assert not (reply.headers or {}).get(ERROR_CODE), reply.headers
        return dict(json.loads(reply.data))

    def wait_for(self, deliberation_id: str, status: str, timeout: float = 120.0) -> dict[str, Any]:
        give_up = time.monotonic() + timeout
        while (reply := self.answer("get", {"deliberation_id": deliberation_id}))["status"] != status:
            assert time.monotonic() < give_up, (
                f"still {reply['status']}: {reply.get('reason')}; {self.intake()}"
            )
            time.sleep(0.2)
        return reply

    def intake(self) -> str:
        """What the intake holds and the runners' consumer has delivered, for a failure message."""

        async def state() -> str:
            nc = await nats.connect(self.url)
            try:
                info = await nc.jetstream().consumer_info("DELIBERATION_INTAKE", "deliberation-runners")
                return f"intake: {info.num_pending} pending, {info.num_ack_pending} delivered unacked"
            finally:
                await nc.close()

        return asyncio.run(state())

    def wait_until_acked(self, timeout: float = 60.0) -> None:
        """Until the intake keeps nothing: a runner acks a request once its flow run has
        returned, a moment after `get` (told before the final event) says concluded."""
        wait_until(lambda: self.stream_messages(INTAKE_STREAM) == 0, timeout)

    def stream_messages(self, stream: str) -> int:
        async def count() -> int:
            nc = await nats.connect(self.url)
            try:
                return int((await nc.jetstream().stream_info(stream)).state.messages)
            finally:
                await nc.close()

        return asyncio.run(count())


def finished_flow_run(flow_run_id: str, timeout: float = 60.0) -> FlowRun:
    """The flow run once in a final state: its deliberation is concluded (and `get` says so)
    before the flow run returns."""
    from prefect import get_client

    with get_client(sync_client=True) as client:

        def final() -> FlowRun | None:
            flow_run = client.read_flow_run(uuid.UUID(flow_run_id))
            return flow_run if flow_run.state is not None and flow_run.state.is_final() else None

        wait_until(final, timeout)
        found = final()
        assert found is not None
        return found


def task_runs_of(
    flow_run_id: str | uuid.UUID,
    until: Callable[[list[TaskRun]], bool] = bool,
    timeout: float = 60.0,
) -> list[TaskRun]:
    """The flow run's task runs once `until` holds for them. Task runs reach the API as events,
    after the flow run's own final state, and in no set order: read them once and a few may
    not be there yet."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(str(flow_run_id))]))
    with get_client(sync_client=True) as client:
        found: list[TaskRun] = []

        def read() -> bool:
            found[:] = client.read_task_runs(flow_run_filter=flow_runs)
            return until(found)

        wait_until(read, timeout)
        return found


def request(url: str, subject: str, data: bytes, timeout: float = 10.0) -> Msg:
    async def ask() -> Msg:
        nc = await nats.connect(url)
        try:
            return await nc.request(subject, data, timeout=timeout)
        finally:
            await nc.close()

    return asyncio.run(ask())


@contextmanager
def running_service(
    fake_llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, concurrency: int = 2
) -> Iterator[Service]:
    """The service on a nats-server of its own and the fake model server, until the block ends."""
    with LocalNatsServer() as nats_server:
        monkeypatch.setenv("VLLM_URL", fake_llm.url)
        monkeypatch.setenv("NATS_URL", nats_server.url)
        monkeypatch.setenv("DELIBERATION_RETRY_BACKOFF_SECONDS", "0.2")
        monkeypatch.setenv("DELIBERATION_SERVICE_CONCURRENCY", str(concurrency))
        ready = threading.Event()
        loop: list[asyncio.AbstractEventLoop] = []
        stop: list[asyncio.Event] = []

        async def run() -> None:
            loop.append(asyncio.get_running_loop())
            stop.append(asyncio.Event())
            await serve(Settings(), stop[0], on_ready=ready.set)

        thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
        thread.start()
        assert ready.wait(60), "the service did not start"
        yield Service(nats_server.url, fake_llm)
        loop[0].call_soon_threadsafe(stop[0].set)
        thread.join(120)
        assert not thread.is_alive(), "the service did not stop"

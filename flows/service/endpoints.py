"""The front of the service: the services-API endpoints `deliberation.submit`, `.get` and
`.cancel`. It stores requests in the intake and reads status records; it runs no flow and
needs neither Prefect's engine nor Ray (a cancel asks the Prefect API to stop a flow run)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from nats.micro import Request
from prefect.logging import get_logger
from pydantic import BaseModel

from agents.adapters.nats import JetStreamBus
from agents.adapters.nats.intake import Intake
from agents.errors import EventBusError
from agents.models import DeliberationRequest
from agents.service import (
    DeliberationRef,
    DeliberationState,
    ErrorCode,
    ServiceFault,
    StatusRecord,
    StatusReply,
    SubmitReply,
    parse_payload,
)
from flows.runtime import metrics
from flows.service.records import (
    CANCELLED_BY_SERVICE,
    announce_accepted,
    cancel_flow_run,
    conclude_without_run,
    record_accepted,
    reply_of,
)

log = get_logger("deliberation")
# Requests answered at once by one service process; a burst beyond waits in its subscription.
IN_FLIGHT_REQUESTS = 256


class DeliberationService:
    """The three endpoints, on the pipeline's NATS connection."""

    def __init__(self, bus: JetStreamBus, intake: Intake) -> None:
        self._bus = bus
        self._intake = intake
        self._announcing: set[asyncio.Task[None]] = set()

    async def _after_reply(self, announcement: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(self._announce(announcement))
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)
        await asyncio.sleep(0)  # its message goes out first, and is on its way as we reply

    @staticmethod
    async def _announce(announcement: Coroutine[Any, Any, None]) -> None:
        try:
            await announcement
        except EventBusError as exc:  # the request is stored and its record made: it runs
            log.warning("the accepted event was not published: %s", str(exc).splitlines()[0])

    async def drain(self) -> None:
        """Wait for the announcements still being published."""
        if self._announcing:
            await asyncio.gather(*self._announcing, return_exceptions=True)

    async def submit(self, data: bytes) -> SubmitReply:
        return await self.submit_request(parse_payload(data, DeliberationRequest))

    async def submit_request(self, request: DeliberationRequest, via: str = "nats") -> SubmitReply:
        """Store a request for a runner, unless its id was submitted already: with the same
        request it is the same deliberation (its status is answered); with another, a
        CONFLICT fault. `via`: the API it came by, as the metrics count it."""
        if request.deliberation_id is None:
            request = request.model_copy(update={"deliberation_id": uuid.uuid4().hex})
        deliberation_id = request.deliberation_id or ""
        digest = request.digest()
        known = await self._intake.status(deliberation_id)
        if known is None:
            # Stored before it is recorded or answered: an accepted request is never lost,
            # and a second submit meanwhile is de-duplicated by the stream.
            await self._intake.enqueue(request)
            accepted = await record_accepted(self._intake, request)
            if accepted.created:
                metrics.SUBMITTED.labels(via).inc()
                for role in request.roles:
                    metrics.AGENTS.labels(role.value).inc(request.agents_per_role)
                # Published before the reply is sent, acknowledged after it: the reply
                # waits on three round trips to JetStream, not four.
                await self._after_reply(announce_accepted(self._bus, request))
            known = accepted.record, accepted.revision
        record, _ = known
        if record.request_digest != digest:
            raise ServiceFault(
                ErrorCode.CONFLICT,
                f"deliberation {deliberation_id} was submitted with a different request; "
                "reuse a deliberation id only to ask the same again, or choose a new one",
            )
        return SubmitReply(deliberation_id=deliberation_id, status=record.status)

    async def get(self, data: bytes) -> StatusReply:
        record = await self.record(parse_payload(data, DeliberationRef).deliberation_id)
        result = await self._bus.load_result(record.deliberation_id) if record.status.concluded else None
        return reply_of(record, result)

    async def cancel(self, data: bytes) -> StatusReply:
        deliberation_id = parse_payload(data, DeliberationRef).deliberation_id
        while True:
            record = await self.record(deliberation_id)
            if record.status.concluded:
                return reply_of(record)
            if record.status is DeliberationState.RUNNING and record.flow_run_id is not None:
                # Its runner's flow run stops at the next check, as after the UI's Cancel.
                await cancel_flow_run(record.flow_run_id, CANCELLED_BY_SERVICE)
                return reply_of(record.model_copy(update={"reason": f"cancelling: {CANCELLED_BY_SERVICE}"}))
            # Not started (waiting in the intake, or between tries): concluded here; its
            # runner will find it concluded and skip it.
            concluded = await conclude_without_run(
                self._bus, self._intake, record, DeliberationState.CANCELLED, CANCELLED_BY_SERVICE
            )
            if concluded is not None:
                return reply_of(concluded)

    async def record(self, deliberation_id: str) -> StatusRecord:
        """Its status record; a NOT_FOUND fault if there is none."""
        known = await self._intake.status(deliberation_id)
        if known is None:
            raise ServiceFault(ErrorCode.NOT_FOUND, f"no deliberation {deliberation_id}")
        return known[0]


Answer = Callable[[bytes], Awaitable[BaseModel]]  # an endpoint: its payload to its reply


class Endpoints:
    """The services-API handlers: each request answered in a task of its own, at most
    IN_FLIGHT_REQUESTS at once. nats-py calls a subscription's handler one message at a
    time, so a burst of submits (each waits on three JetStream acks) queued behind each
    other; nats.micro's processing_time then counts the dispatch only."""

    def __init__(self) -> None:
        self._in_flight = asyncio.Semaphore(IN_FLIGHT_REQUESTS)
        self._answering: set[asyncio.Task[None]] = set()

    def handler(self, answer: Answer) -> Callable[[Request], Awaitable[None]]:
        async def dispatch(request: Request) -> None:
            await self._in_flight.acquire()  # beyond the bound, the subscription waits
            task = asyncio.create_task(self._respond(answer, request))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)

        return dispatch

    async def _respond(self, answer: Answer, request: Request) -> None:
        try:
            await self._answer(answer, request)
        except Exception as exc:  # the reply itself not sent: the connection closing, say
            log.warning("%s: no reply sent: %s", request.subject, exc)
        finally:
            self._in_flight.release()

    @staticmethod
    async def _answer(answer: Answer, request: Request) -> None:
        """The reply as JSON, or an error reply with a code and one line."""
        try:
            reply = await answer(request.data)
        except ServiceFault as fault:
            await request.respond_error(str(int(fault.code)), fault.description)
        except EventBusError as exc:
            await request.respond_error(str(int(ErrorCode.UNAVAILABLE)), str(exc).splitlines()[0])
        except Exception as exc:
            log.exception("%s failed", request.subject)
            await request.respond_error("500", f"{type(exc).__name__}: {exc}".splitlines()[0])
        else:
            await request.respond(reply.model_dump_json().encode())

    async def drain(self) -> None:
        """Wait for the requests being answered."""
        if self._answering:
            await asyncio.gather(*self._answering, return_exceptions=True)

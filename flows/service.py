"""`python -m flows.service`: deliberation as a service on NATS, for services in any
language that hold no Prefect client.

    deliberation.submit   a DeliberationRequest -> {"deliberation_id", "status": "accepted"}
    deliberation.get      {"deliberation_id"}   -> its status, flow run id and, once concluded, result
    deliberation.cancel   {"deliberation_id"}   -> the deliberation stops and concludes cancelled

on the NATS services API (`$SRV.PING|INFO|STATS.deliberation` discover it). A submitted
request is stored in the intake stream before the reply; runners (this process, and any
other started the same way) take requests from it, each at most
DELIBERATION_SERVICE_CONCURRENCY at once, and run each as a flow run of `deliberate`.
A request whose run crashes is delivered again (a resumed run repeats no finished call), up
to DELIBERATION_SERVICE_MAX_TRIES runs; then it is concluded failed. Status changes are
events: deliberation.accepted, .started, then .completed, .failed or .cancelled.

With NATS_URL, VLLM_URL or PREFECT_API_URL unset it starts the same embedded defaults as
`python -m flows.deliberate`, and says on stderr what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import signal
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import nats.micro
from nats.aio.msg import Msg
from nats.micro import Request
from prefect import get_client
from prefect.logging import get_logger
from prefect.states import Cancelling, State
from pydantic import BaseModel, ValidationError

from agents.adapters.nats import JetStreamBus
from agents.adapters.nats.intake import Intake
from agents.adapters.secrets import nats_token
from agents.conclusion import conclude_stopped
from agents.context import fit_context
from agents.errors import ConfigurationError, EventBusError, describe_validation_error, is_decided
from agents.events import DeliberationProgressEvent, agent_event, deliberation_event
from agents.models import DeliberationRequest, DeliberationResult, DeliberationStatus
from agents.service import (
    ENDPOINTS,
    HOST_METADATA,
    SERVICE_NAME,
    SERVICE_VERSION,
    DeliberationRef,
    DeliberationState,
    ErrorCode,
    ServiceFault,
    StatusRecord,
    StatusReply,
    SubmitReply,
    parse_payload,
)
from agents.settings import Settings
from flows.deliberate import deliberate
from flows.runtime.run_hooks import on_running, when_started

log = get_logger("deliberation")
TAKE_SECONDS = 1.0  # how long a runner with a free slot waits for a request before asking again
RETRY_DELAY_SECONDS = 2.0  # before a crashed run's request is delivered again
# Requests answered at once by one service process; a burst beyond waits in its subscription.
IN_FLIGHT_REQUESTS = 256
CANCELLED_BY_SERVICE = "cancelled through the deliberation service"


def _now() -> datetime:
    return datetime.now(UTC)


class DeliberationService:
    """The three endpoints, on the pipeline's NATS connection."""

    def __init__(self, bus: JetStreamBus, intake: Intake) -> None:
        self._bus = bus
        self._intake = intake

    async def submit(self, data: bytes) -> SubmitReply:
        request = parse_payload(data, DeliberationRequest)
        if request.deliberation_id is None:
            request = request.model_copy(update={"deliberation_id": uuid.uuid4().hex})
        deliberation_id = request.deliberation_id or ""
        digest = request.digest()
        known = await self._intake.status(deliberation_id)
        if known is None:
            # Stored before it is recorded or answered: an accepted request is never lost,
            # and a second submit meanwhile is de-duplicated by the stream.
            await self._intake.enqueue(request)
            known = await record_accepted(self._bus, self._intake, request)
        record, _ = known
        if record.request_digest != digest:
            raise ServiceFault(
                ErrorCode.CONFLICT,
                f"deliberation {deliberation_id} was submitted with a different request; "
                "reuse a deliberation id only to ask the same again, or choose a new one",
            )
        return SubmitReply(deliberation_id=deliberation_id, status=record.status)

    async def get(self, data: bytes) -> StatusReply:
        record = await self._record(parse_payload(data, DeliberationRef).deliberation_id)
        result = await self._bus.load_result(record.deliberation_id) if record.status.concluded else None
        return _reply(record, result)

    async def cancel(self, data: bytes) -> StatusReply:
        deliberation_id = parse_payload(data, DeliberationRef).deliberation_id
        while True:
            record = await self._record(deliberation_id)
            if record.status.concluded:
                return _reply(record)
            if record.status is DeliberationState.RUNNING and record.flow_run_id is not None:
                # Its runner's flow run stops at the next check, as after the UI's Cancel.
                await cancel_flow_run(record.flow_run_id, CANCELLED_BY_SERVICE)
                return _reply(record.model_copy(update={"reason": f"cancelling: {CANCELLED_BY_SERVICE}"}))
            # Not started (waiting in the intake, or between tries): concluded here; its
            # runner will find it concluded and skip it.
            concluded = await conclude_without_run(
                self._bus, self._intake, record, DeliberationState.CANCELLED, CANCELLED_BY_SERVICE
            )
            if concluded is not None:
                return _reply(concluded)

    async def _record(self, deliberation_id: str) -> StatusRecord:
        known = await self._intake.status(deliberation_id)
        if known is None:
            raise ServiceFault(ErrorCode.NOT_FOUND, f"no deliberation {deliberation_id}")
        return known[0]


async def record_accepted(
    bus: JetStreamBus, intake: Intake, request: DeliberationRequest
) -> tuple[StatusRecord, int]:
    """The status record of a request taken in, created (and announced) unless it exists:
    by the submit that stored the request, or by the runner that took it first. Returns the
    record as it stands, and its revision."""
    deliberation_id = request.deliberation_id or ""
    now = _now()
    record = StatusRecord(
        deliberation_id=deliberation_id,
        status=DeliberationState.ACCEPTED,
        request_digest=request.digest(),
        request=request,
        accepted_at=now,
        updated_at=now,
    )
    revision = await intake.create_status(record)
    if revision is not None:
        task_id = request.task_id or deliberation_id
        await bus.publish(
            DeliberationProgressEvent(deliberation_id=deliberation_id, task_id=task_id, status="accepted")
        )
        return record, revision
    known = await intake.status(deliberation_id)
    assert known is not None  # created by whoever was first
    return known


def _reply(record: StatusRecord, result: DeliberationResult | None = None) -> StatusReply:
    return StatusReply(
        deliberation_id=record.deliberation_id,
        status=record.status,
        flow_run_id=record.flow_run_id,
        reason=record.reason,
        result=result,
    )


async def cancel_flow_run(flow_run_id: str, reason: str) -> None:
    async with get_client() as client:
        await client.set_flow_run_state(UUID(flow_run_id), Cancelling(message=reason), force=True)


async def conclude_without_run(
    bus: JetStreamBus, intake: Intake, record: StatusRecord, status: DeliberationState, reason: str
) -> StatusRecord | None:
    """Conclude a deliberation that is not running (cancelled before it started, or failed
    on every try): its result (the proposals its runs made stand), stored, then announced.
    None if its status changed meanwhile (the caller reads it again)."""
    known = await intake.status(record.deliberation_id)
    if known is None or known[0] != record:
        return None
    _, revision = known
    request = record.request
    ledger = await bus.open_ledger(record.deliberation_id, record.request_digest, record.accepted_at)
    result = conclude_stopped(
        request,
        record.deliberation_id,
        DeliberationStatus(status.value),
        reason,
        ledger.calls,
        ledger.started_at,
        _now(),
        context_cut=fit_context(request).gaps(),
    )
    concluded = record.model_copy(update={"status": status, "reason": reason, "updated_at": _now()})
    if not await intake.update_status(concluded, revision):
        return None
    await bus.save_result(result)
    # Every agent's outcome, as a flow run publishes them: those with no proposal have
    # theirs here only; a proposal's own event, published already, is de-duplicated.
    await bus.publish_all([agent_event(result.deliberation_id, result.task_id, o) for o in result.outcomes])
    await bus.publish(deliberation_event(result))
    return concluded


class Runner:
    """Takes requests from the intake, at most `concurrency` at once, and runs each as a flow
    run of `deliberate` on a thread of its own; the rest wait in the stream."""

    def __init__(self, bus: JetStreamBus, intake: Intake, settings: Settings) -> None:
        self._bus = bus
        self._intake = intake
        self._settings = settings
        self._slots = asyncio.Semaphore(settings.service_concurrency)
        self._running: set[asyncio.Task[None]] = set()
        # A thread per slot: asyncio's default pool has min(32, cores + 4) threads, so on
        # 2 cores a runner ran 6 deliberations at once whatever its concurrency said, and
        # held the others it had taken in the pool's queue.
        self._threads = ThreadPoolExecutor(settings.service_concurrency, thread_name_prefix="deliberate")

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set; then waits for the deliberations it runs."""
        try:
            await self._take_until(stop)
        finally:
            self._threads.shutdown(wait=False)

    async def _take_until(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._slots.acquire()
            try:
                msg = await self._intake.take(TAKE_SECONDS)
            except Exception as exc:  # NATS away for a moment: take again
                log.warning("taking a request failed: %s", exc)
                msg = None
                await asyncio.sleep(TAKE_SECONDS)
            if msg is None:
                self._slots.release()
                continue
            task = asyncio.create_task(self._handle(msg))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _handle(self, msg: Msg) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        try:
            await self._deliberate(msg)
        except Exception as exc:  # never lose the slot or leave the message unanswered
            log.exception("request %s: %s; it will be delivered again", msg.subject, exc)
            with contextlib.suppress(Exception):
                await msg.nak(delay=RETRY_DELAY_SECONDS)
        finally:
            heartbeat.cancel()
            self._slots.release()

    async def _heartbeat(self, msg: Msg) -> None:
        """Tell JetStream the request is being worked on, so it is not delivered again."""
        while True:
            await asyncio.sleep(self._settings.service_ack_wait_seconds / 3)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _deliberate(self, msg: Msg) -> None:
        request = _intake_request(msg)
        if request is None:
            await msg.term()
            return
        deliberation_id = request.deliberation_id or ""
        # Taken before its submit recorded it, possibly: the record is made here then.
        known = await self._intake.status(deliberation_id) or await record_accepted(
            self._bus, self._intake, request
        )
        if known[0].status.concluded:  # cancelled before it started, or done
            await msg.ack()
            return
        record, _ = known
        tries = msg.metadata.num_delivered
        log.info("deliberation %s taken (delivery %d)", deliberation_id, tries)
        if tries > self._settings.service_max_tries:
            reason = f"failed on every one of {self._settings.service_max_tries} tries: {record.reason}"
            await self._conclude(record, DeliberationState.FAILED, reason, msg)
            return

        loop = asyncio.get_running_loop()

        def started(flow_run_id: str) -> None:
            asyncio.run_coroutine_threadsafe(self._started(request, flow_run_id, tries), loop).result(30)

        with when_started(deliberation_id, started):
            # In this context, as to_thread would: the flow run's Prefect API is in it.
            run_here = contextvars.copy_context().run
            state, value = await loop.run_in_executor(self._threads, run_here, _run_flow, request)
        if isinstance(value, DeliberationResult):
            await self._finished(deliberation_id, value)
            await msg.ack()
            return
        reason = f"try {tries}: {_one_line(value, state)}"
        latest = await self._intake.status(deliberation_id)
        assert latest is not None
        if is_decided(value) or tries >= self._settings.service_max_tries:
            # A decided failure (bad configuration, an id reused) or the last try.
            await self._conclude(latest[0], DeliberationState.FAILED, reason, msg)
            return
        waiting = latest[0].model_copy(
            update={
                "status": DeliberationState.ACCEPTED,
                "tries": tries,
                "reason": reason,
                "updated_at": _now(),
            }
        )
        await self._intake.update_status(waiting, latest[1])
        log.warning("deliberation %s %s; it will be tried again", deliberation_id, reason)
        await msg.nak(delay=RETRY_DELAY_SECONDS)

    async def _started(self, request: DeliberationRequest, flow_run_id: str, tries: int) -> None:
        deliberation_id = request.deliberation_id or ""
        running = {"status": DeliberationState.RUNNING, "flow_run_id": flow_run_id, "tries": tries}
        record = await self._intake.change_status(
            deliberation_id,
            lambda r: None if r.status.concluded else r.model_copy(update=running | {"updated_at": _now()}),
        )
        if record is not None and record.status.concluded:  # cancelled as it started: stop it at once
            await cancel_flow_run(flow_run_id, record.reason or CANCELLED_BY_SERVICE)
            return
        event = DeliberationProgressEvent(
            deliberation_id=deliberation_id,
            task_id=request.task_id or deliberation_id,
            status="started",
            flow_run_id=flow_run_id,
            attempt=tries,
        )
        await self._bus.publish(event)

    async def _finished(self, deliberation_id: str, result: DeliberationResult) -> None:
        """The flow run concluded it (and stored and announced its result)."""
        done = {"status": DeliberationState(result.status.value), "reason": result.summary}
        await self._intake.change_status(
            deliberation_id, lambda r: r.model_copy(update=done | {"updated_at": _now()})
        )

    async def _conclude(self, record: StatusRecord, status: DeliberationState, reason: str, msg: Msg) -> None:
        while await conclude_without_run(self._bus, self._intake, record, status, reason) is None:
            known = await self._intake.status(record.deliberation_id)
            if known is None or known[0].status.concluded:
                break
            record = known[0]
        log.warning("deliberation %s %s: %s", record.deliberation_id, status, reason)
        await msg.ack()


def _intake_request(msg: Msg) -> DeliberationRequest | None:
    """The request in an intake message, or None (and a log line) if it is not one the submit
    endpoint stores: a valid request with its deliberation id. Someone else may publish on
    the intake's subjects; without an id it was delivered again and again, for ever."""
    try:
        request = DeliberationRequest.model_validate_json(msg.data)
    except ValidationError as exc:
        why = describe_validation_error(exc)
    else:
        if request.deliberation_id:
            return request
        why = "no deliberation_id"
    log.warning("%s is not a deliberation request (%s); dropped", msg.subject, why)
    return None


def _run_flow(request: DeliberationRequest) -> tuple[State[Any], object]:
    """The flow run's final state and its value (a DeliberationResult, or what failed it)."""
    state = deliberate.with_options(on_running=[on_running])(request=request, return_state=True)
    return state, state.result(raise_on_failure=False)


def _one_line(value: object, state: State[Any]) -> str:
    text = str(value) if isinstance(value, BaseException) and str(value) else state.message or state.name
    return (text or "crashed").splitlines()[0]


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


async def serve(settings: Settings, stop: asyncio.Event, on_ready: Callable[[], Any] | None = None) -> None:
    """Serve the endpoints and run deliberations until `stop` is set."""
    bus = await JetStreamBus.connect(settings.bus_config(nats_token(settings)))
    try:
        intake = bus.intake(settings.service_ack_wait_seconds)
        await intake.ensure()
        await bus.ensure_buckets()
        service = DeliberationService(bus, intake)
        micro = await nats.micro.add_service(
            bus.client,
            name=SERVICE_NAME,
            version=SERVICE_VERSION,
            description="Deliberations of a council of LLM agents: submit, get, cancel.",
            metadata={HOST_METADATA: socket.gethostname()},
        )
        group = micro.add_group(name=SERVICE_NAME)
        endpoints = Endpoints()
        for name in ENDPOINTS:
            await group.add_endpoint(name=name, handler=endpoints.handler(getattr(service, name)))
        # nats-py sends SUB lazily: until the server has them, a request finds no responder.
        await bus.client.flush()
        if on_ready is not None:
            on_ready()
        try:
            await Runner(bus, intake, settings).run(stop)
        finally:
            await micro.stop()
            await endpoints.drain()
            await intake.close()
    finally:
        await bus.close()


@contextlib.contextmanager
def _stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Iterator[None]:
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        yield
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def main(argv: list[str] | None = None) -> int:
    if argv if argv is not None else sys.argv[1:]:
        print(
            "usage: python -m flows.service (configured by the environment; see the README)", file=sys.stderr
        )
        return 2
    from flows.runtime.embedded import embedded_servers
    from flows.runtime.prefect_api import prefect_api
    from flows.runtime.preflight import check_default_endpoint, connect_event_bus
    from flows.runtime.ray_setup import local_ray

    try:
        settings = Settings()
        with embedded_servers(settings) as settings, local_ray(settings) as start_ray:
            check_default_endpoint(settings)
            connect_event_bus(settings).close()
            with prefect_api(while_starting=start_ray):

                async def run() -> None:
                    stop = asyncio.Event()
                    with _stop_on_signals(asyncio.get_running_loop(), stop):
                        await serve(settings, stop, on_ready=lambda: _say_ready(settings))

                asyncio.run(run())
    except ValidationError as exc:
        print(f"service: {describe_validation_error(exc)}", file=sys.stderr)
        return 2
    except (ConfigurationError, EventBusError) as exc:
        print(f"service: {exc}", file=sys.stderr)
        return 2
    return 0


def _say_ready(settings: Settings) -> None:
    print(
        f"service: {SERVICE_NAME} {SERVICE_VERSION} on {settings.nats_url}: "
        f"{', '.join(f'{SERVICE_NAME}.{name}' for name in ENDPOINTS)}; "
        f"up to {settings.service_concurrency} deliberations at once",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())

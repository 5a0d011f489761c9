"""The fleet orchestrator's deliberation RPCs over gRPC, on the same core as the NATS
endpoints (flows/service/endpoints.py): the same intake, status records, results and flow
runs, so a deliberation submitted here is one a NATS client can `get`, and the reverse.

A client that cancels its `Deliberate` or `StreamDeliberation` call stops waiting; the
deliberation goes on (cancel it on NATS: `deliberation.cancel`). Methods of the fleet's
service this one does not serve (council registry, planning events, context) answer
UNIMPLEMENTED. Secured as NATS is: TLS with a server certificate, and a bearer token in
the call's `authorization` metadata when one is set; with neither, it listens on
127.0.0.1 unless told another host.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from nats.aio.msg import Msg
from prefect.logging import get_logger

from agents.adapters.nats import JetStreamBus
from agents.errors import EventBusError
from agents.events import STREAM_SUBJECTS, AgentResponseEvent, DeliberationEvent, Event, parse_event
from agents.models import DeliberationRequest
from agents.service import DeliberationState, ErrorCode, ServiceFault, StatusRecord
from flows.runtime import metrics
from flows.service.endpoints import DeliberationService
from flows.service.fleet import mapping
from flows.service.fleet import orchestrator_pb2 as pb
from flows.service.fleet import orchestrator_pb2_grpc as pb_grpc

log = get_logger("deliberation")

SERVICE = pb.DESCRIPTOR.services_by_name["OrchestratorService"].full_name
SERVED = frozenset(pb.DESCRIPTOR.services_by_name["OrchestratorService"].methods_by_name)
# A Deliberate call waiting for its final event also reads the status record this often:
# an event missed while NATS reconnected does not leave it waiting for ever.
STATUS_POLL_SECONDS = 5.0
FAULT_CODES = {
    ErrorCode.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.CONFLICT: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}

T = TypeVar("T")


class EventWatch:
    """One subscription to the event subjects for every call that follows a deliberation,
    each fed the events of its own by id. Messages that are not events of ours (the
    subjects are shared) are skipped."""

    def __init__(self, bus: JetStreamBus) -> None:
        self._bus = bus
        self._followers: dict[str, list[asyncio.Queue[Event]]] = {}
        self._subscriptions: list[Any] = []

    async def start(self) -> None:
        for subjects in STREAM_SUBJECTS.values():
            for subject in subjects:
                self._subscriptions.append(await self._bus.client.subscribe(subject, cb=self._on_message))

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        self._subscriptions.clear()

    async def _on_message(self, msg: Msg) -> None:
        try:
            event = parse_event(msg.subject, msg.data)
        except ValueError:
            return
        for queue in self._followers.get(event.deliberation_id, []):
            queue.put_nowait(event)

    @contextlib.contextmanager
    def follow(self, deliberation_id: str) -> Iterator[asyncio.Queue[Event]]:
        """Its events from now on, until the block ends."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._followers.setdefault(deliberation_id, []).append(queue)
        try:
            yield queue
        finally:
            followers = self._followers[deliberation_id]
            followers.remove(queue)
            if not followers:
                del self._followers[deliberation_id]


class FleetOrchestrator(pb_grpc.OrchestratorServiceServicer):
    def __init__(self, service: DeliberationService, bus: JetStreamBus, watch: EventWatch) -> None:
        self._service = service
        self._bus = bus
        self._watch = watch
        self._started = time.monotonic()

    async def Deliberate(
        self, request: pb.DeliberateRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeliberateResponse:
        task_id, ours = await _parsed(request, context)
        deliberation_id = ours.deliberation_id or ""
        with self._watch.follow(deliberation_id) as events:
            await self._submit(ours, context)
            record = await self._concluded(deliberation_id, events, context)
        result = await _answer(context, self._bus.load_result(deliberation_id))
        return mapping.response_of(task_id, record, result)

    async def DeliberateForBacklogReview(
        self, request: pb.DeliberateRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeliberateResponse:
        task_id, ours = await _parsed(request, context)
        await self._submit(ours, context)
        record = await self._record(ours.deliberation_id or "", context)
        return mapping.response_of(task_id, record, None)

    async def GetDeliberationResult(
        self, request: pb.GetDeliberationResultRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetDeliberationResultResponse:
        if not request.task_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "task_id is empty")
        record = await self._record(mapping.deliberation_id_of(request.task_id), context)
        result = (
            await _answer(context, self._bus.load_result(record.deliberation_id))
            if record.status.concluded
            else None
        )
        return mapping.result_response_of(request.task_id, record, result)

    async def StreamDeliberation(
        self, request: pb.DeliberateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DeliberationUpdate]:
        _, ours = await _parsed(request, context)
        deliberation_id = ours.deliberation_id or ""
        agents = len(ours.roles) * ours.agents_per_role
        with self._watch.follow(deliberation_id) as live:
            await self._submit(ours, context)
            yield pb.DeliberationUpdate(status="generating", progress_percent=0, current_step="accepted")
            record = await self._record(deliberation_id, context)
            # Submitted before (the same task id): what it did so far is in the streams.
            earlier = (
                await _answer(context, self._bus.read_events(deliberation_id, since=record.accepted_at))
                if record.status is not DeliberationState.ACCEPTED
                else []
            )
            seen: set[str] = set()
            done = 0
            async for event in _events(earlier, live, lambda: self._is_concluded(deliberation_id, context)):
                if event is None:  # the status record says it concluded: its final event came and went
                    event = await self._final_event(deliberation_id, context)
                if event.msg_id in seen:
                    continue
                seen.add(event.msg_id)
                if isinstance(event, AgentResponseEvent):
                    done += 1
                update = mapping.update_of(event, agents, done)
                if update is not None:
                    yield update
                if isinstance(event, DeliberationEvent):
                    return

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatusResponse:
        """SERVING, and this process's counts (flows/runtime/metrics.py): what it took in,
        what it runs and concluded if it is a runner too."""
        reply = pb.GetStatusResponse(status="SERVING", uptime_seconds=int(time.monotonic() - self._started))
        if request.include_stats:
            counts = metrics.counts()
            concluded = counts["concluded"]
            reply.stats.CopyFrom(
                pb.OrchestratorStats(
                    total_deliberations=counts["submitted"],
                    total_orchestrations=sum(concluded.values()),
                    avg_deliberation_time_ms=counts["mean_duration_ms"],
                    active_councils=counts["running"],
                    role_counts=metrics.roles_submitted(),
                )
            )
        return reply

    async def _submit(self, request: DeliberationRequest, context: grpc.aio.ServicerContext) -> None:
        await _answer(context, self._service.submit_request(request, via="grpc"))

    async def _record(self, deliberation_id: str, context: grpc.aio.ServicerContext) -> StatusRecord:
        return await _answer(context, self._service.record(deliberation_id))

    async def _concluded(
        self, deliberation_id: str, events: asyncio.Queue[Event], context: grpc.aio.ServicerContext
    ) -> StatusRecord:
        """Its status record once concluded (the record is stored before the final event)."""
        while True:
            record = await self._record(deliberation_id, context)
            if record.status.concluded:
                return record
            async for event in _events([], events, lambda: self._is_concluded(deliberation_id, context)):
                if event is None or isinstance(event, DeliberationEvent):
                    break

    async def _is_concluded(self, deliberation_id: str, context: grpc.aio.ServicerContext) -> bool:
        return (await self._record(deliberation_id, context)).status.concluded

    async def _final_event(self, deliberation_id: str, context: grpc.aio.ServicerContext) -> Event:
        record = await self._record(deliberation_id, context)
        stored = await _answer(context, self._bus.read_events(deliberation_id, since=record.accepted_at))
        finals = [e for e in stored if isinstance(e, DeliberationEvent)]
        if not finals:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"deliberation {deliberation_id}: no final event stored yet"
            )
        return finals[-1]


async def _events(
    earlier: list[Event], live: asyncio.Queue[Event], concluded: Callable[[], Awaitable[bool]]
) -> AsyncIterator[Event | None]:
    """The stored events, then the live ones; None when no event came for a while and the
    status record says it concluded."""
    for event in earlier:
        yield event
    while True:
        try:
            yield await asyncio.wait_for(live.get(), STATUS_POLL_SECONDS)
        except TimeoutError:
            if await concluded():
                yield None


async def _parsed(
    request: pb.DeliberateRequest, context: grpc.aio.ServicerContext
) -> tuple[str, DeliberationRequest]:
    try:
        return mapping.request_of(request)
    except mapping.InvalidRequest as exc:
        await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))


async def _answer(context: grpc.aio.ServicerContext, work: Awaitable[T]) -> T:
    """What `work` gives, or the call aborted with the status code its error maps to."""
    try:
        return await work
    except ServiceFault as fault:
        await _abort(context, FAULT_CODES.get(fault.code, grpc.StatusCode.INTERNAL), fault.description)
    except EventBusError as exc:
        await _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc).splitlines()[0])


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message.splitlines()[0] if message else code.name)
    raise AssertionError("unreachable: abort raises")


class _NotServed(grpc.GenericRpcHandler):
    """Any other method of the fleet's service: UNIMPLEMENTED, saying so in one line."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if not method.startswith(f"/{SERVICE}/") or method.rsplit("/", 1)[-1] in SERVED:
            return None
        name = method.rsplit("/", 1)[-1]

        async def refuse(_: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{name} is not served here: this is the deliberation service (Deliberate, "
                "DeliberateForBacklogReview, GetDeliberationResult, StreamDeliberation, GetStatus)",
            )

        return grpc.stream_stream_rpc_method_handler(refuse)


class _BearerToken(grpc.aio.ServerInterceptor):
    """Every call but the health checks carries `authorization: Bearer <token>`."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if handler_call_details.method.startswith("/grpc.health.v1.Health/"):
            return await continuation(handler_call_details)
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        scheme, _, token = str(given).partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), self._token):
            return await continuation(handler_call_details)

        async def refuse(_: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required: authorization: Bearer <token>"
            )

        return grpc.stream_stream_rpc_method_handler(refuse)


@dataclass(frozen=True)
class GrpcListen:
    """Where and how the fleet API listens."""

    host: str
    port: int
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    token: str | None = None

    @property
    def secured(self) -> bool:
        return self.tls_cert_file is not None or self.token is not None


@contextlib.asynccontextmanager
async def fleet_api(
    listen: GrpcListen, service: DeliberationService, bus: JetStreamBus
) -> AsyncIterator[int]:
    """The gRPC server while the block runs; yields the port it listens on."""
    interceptors = [_BearerToken(listen.token)] if listen.token else []
    server = grpc.aio.server(interceptors=interceptors)
    watch = EventWatch(bus)
    await watch.start()
    pb_grpc.add_OrchestratorServiceServicer_to_server(FleetOrchestrator(service, bus, watch), server)
    server.add_generic_rpc_handlers((_NotServed(),))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE, reflection.SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server
    )
    address = f"{listen.host}:{listen.port}"
    if listen.tls_cert_file is not None and listen.tls_key_file is not None:
        credentials = grpc.ssl_server_credentials(
            [(listen.tls_key_file.read_bytes(), listen.tls_cert_file.read_bytes())]
        )
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    await server.start()
    for name in ("", SERVICE):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    try:
        yield port
    finally:
        await health.enter_graceful_shutdown()
        await server.stop(grace=5)
        await watch.stop()

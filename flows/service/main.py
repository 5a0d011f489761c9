"""The service's process: the front's endpoints and the runners on one NATS connection,
until SIGINT or SIGTERM; `main` starts the embedded defaults where nothing is configured."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import nats.micro
from prefect.settings import PREFECT_API_URL
from pydantic import ValidationError

from agents.adapters.nats import JetStreamBus
from agents.adapters.nats.intake import Intake
from agents.adapters.secrets import nats_token
from agents.errors import ConfigurationError, EventBusError, describe_validation_error
from agents.service import ENDPOINTS, HOST_METADATA, ROLE_METADATA, SERVICE_NAME, SERVICE_VERSION
from agents.settings import Settings
from flows.runtime import metrics
from flows.runtime.console import plain_console_logs
from flows.runtime.prefect_tls import share_prefect_tls_contexts
from flows.service.endpoints import DeliberationService, Endpoints
from flows.service.readiness import READY, ReadyFile, until_model_server_answers

INTAKE_DEPTH_SECONDS = 5.0  # how often /metrics's intake depth is read


async def serve(settings: Settings, stop: asyncio.Event, on_ready: Callable[[], Any] | None = None) -> None:
    """Serve the endpoints (role front or both) and run deliberations (runner or both)
    until `stop` is set."""
    bus = await JetStreamBus.connect(settings.bus_config(nats_token(settings)))
    ready = ReadyFile(settings.service_ready_file)
    try:
        intake = bus.intake(settings.service_ack_wait_seconds)
        await intake.ensure()
        await bus.ensure_buckets()
        try:
            async with _front(bus, intake, settings), _figures(settings, intake):
                # nats-py sends SUB lazily: until the server has them, a request finds no responder.
                await bus.client.flush()
                if settings.service_role == "front":
                    _ready(ready, on_ready)
                    await stop.wait()
                elif await until_model_server_answers(settings, stop, ready):
                    _ready(ready, on_ready)
                    # Imported here: a front never loads the flow, Prefect's engine or Ray.
                    from flows.service.runner import Runner

                    await Runner(bus, intake, settings).run(stop)
        finally:
            await intake.close()
    finally:
        ready.remove()
        await bus.close()


def _ready(ready: ReadyFile, on_ready: Callable[[], Any] | None) -> None:
    ready.say(READY)
    if on_ready is not None:
        on_ready()


@contextlib.asynccontextmanager
async def _front(bus: JetStreamBus, intake: Intake, settings: Settings) -> AsyncIterator[None]:
    """The service's instance (it answers $SRV.PING, INFO and STATS, so probes and
    discovery see every process) and, unless it is a runner only, the endpoints, and the
    fleet API over gRPC where configured; stopped, and their answers in flight finished,
    on the way out."""
    role = settings.service_role
    micro = await nats.micro.add_service(
        bus.client,
        name=SERVICE_NAME,
        version=SERVICE_VERSION,
        description="Deliberations of a council of LLM agents: submit, get, cancel.",
        metadata={HOST_METADATA: socket.gethostname(), ROLE_METADATA: role},
        # Each endpoint's STATS carry this process's counts, as /metrics and GetStatus do.
        stats_handler=lambda _: metrics.counts(),
    )
    endpoints = Endpoints()
    service: DeliberationService | None = None
    if role != "runner":
        service = DeliberationService(bus, intake)
        group = micro.add_group(name=SERVICE_NAME)
        for name in ENDPOINTS:
            await group.add_endpoint(name=name, handler=endpoints.handler(getattr(service, name)))
    try:
        async with contextlib.AsyncExitStack() as stack:
            if service is not None and settings.grpc_port is not None:
                await stack.enter_async_context(_fleet_api(settings, service, bus))
            yield
    finally:
        await micro.stop()
        await endpoints.drain()
        if service is not None:
            await service.drain()


@contextlib.asynccontextmanager
async def _figures(settings: Settings, intake: Intake) -> AsyncIterator[None]:
    """/metrics where configured, with the intake's depth read every few seconds."""
    if settings.metrics_port is None:
        yield
        return

    async def watch_depth() -> None:
        while True:
            with contextlib.suppress(EventBusError):
                pending, unacked = await intake.depth()
                metrics.INTAKE_PENDING.set(pending)
                metrics.INTAKE_UNACKED.set(unacked)
            await asyncio.sleep(INTAKE_DEPTH_SECONDS)

    with metrics.metrics_server(settings.metrics_host, settings.metrics_port) as port:
        print(f"service: metrics on http://{settings.metrics_host}:{port}/metrics", file=sys.stderr)
        depth = asyncio.create_task(watch_depth())
        try:
            yield
        finally:
            depth.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await depth


@contextlib.asynccontextmanager
async def _fleet_api(
    settings: Settings, service: DeliberationService, bus: JetStreamBus
) -> AsyncIterator[None]:
    """The fleet orchestrator's RPCs over gRPC (flows/service/fleet), saying where and how."""
    from flows.service.fleet.server import GrpcListen, fleet_api

    token = settings.grpc_token.get_secret_value() if settings.grpc_token is not None else None
    secured = settings.grpc_tls_cert_file is not None or token is not None
    listen = GrpcListen(
        host=settings.grpc_host or ("[::]" if secured else "127.0.0.1"),
        port=settings.grpc_port or 0,
        tls_cert_file=settings.grpc_tls_cert_file,
        tls_key_file=settings.grpc_tls_key_file,
        token=token,
    )
    async with fleet_api(listen, service, bus) as port:
        how = [w for w, on in (("TLS", listen.tls_cert_file is not None), ("a bearer token", token)) if on]
        said = (
            f"with {' and '.join(how)}"
            if how
            else "no TLS, no token: set DELIBERATION_GRPC_TLS_CERT_FILE/_KEY_FILE or DELIBERATION_GRPC_TOKEN "
            "before serving other hosts"
        )
        print(f"service: fleet.orchestrator.v1 over gRPC on {listen.host}:{port}, {said}", file=sys.stderr)
        yield


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
    from flows.runtime.preflight import connect_event_bus
    from flows.runtime.ray_setup import local_ray

    plain_console_logs()
    share_prefect_tls_contexts()
    try:
        settings = Settings()
        runs = settings.service_role != "front"
        temporary = not PREFECT_API_URL.value()
        if temporary and not runs:
            # A temporary API of its own would hold none of the runners' flow runs.
            raise ConfigurationError(
                "DELIBERATION_SERVICE_ROLE=front needs PREFECT_API_URL: the runners' Prefect "
                "server, where it cancels their flow runs"
            )
        # A front calls no model: it starts no model server. A runner waits for its model
        # server once it serves (flows/service/readiness.py).
        with embedded_servers(settings, with_model=runs) as settings, local_ray(settings) as start_ray:
            connect_event_bus(settings).close()
            # The runners start Ray and their call hosts while the Prefect API comes up.
            with prefect_api(while_starting=_start_runner(start_ray) if runs else None):

                async def run() -> None:
                    stop = asyncio.Event()
                    with _stop_on_signals(asyncio.get_running_loop(), stop):
                        await serve(settings, stop, on_ready=lambda: _say_ready(settings, temporary))

                asyncio.run(run())
    except ValidationError as exc:
        print(f"service: {describe_validation_error(exc)}", file=sys.stderr)
        return 2
    except (ConfigurationError, EventBusError) as exc:
        print(f"service: {exc}", file=sys.stderr)
        return 2
    return 0


def _start_runner(start_ray: Callable[[], None]) -> Callable[[], None]:
    def start() -> None:
        # Prefect imports FastAPI's encoder at a flow run's first parameters: in a burst's
        # first seconds that was 16 % of a runner's CPU (BENCHMARKS.md); paid here instead.
        import fastapi.encoders  # noqa: F401

        from flows.hosting import start_call_hosts

        start_ray()
        start_call_hosts()

    return start


def _say_ready(settings: Settings, temporary_api: bool) -> None:
    role = settings.service_role
    does = []
    if role != "runner":
        does.append(", ".join(f"{SERVICE_NAME}.{name}" for name in ENDPOINTS))
    if role != "front":
        does.append(f"up to {settings.service_concurrency} deliberations at once")
    print(
        f"service: {SERVICE_NAME} {SERVICE_VERSION} on {settings.nats_url}: {'; '.join(does)}",
        file=sys.stderr,
    )
    if temporary_api and role != "front":
        # Said at every start: the embedded default's SQLite ran a burst at a quarter of
        # PostgreSQL's speed (BENCHMARKS.md).
        print(
            "service: on a temporary Prefect API (SQLite), for trying it out; for load, set "
            "PREFECT_API_URL to a Prefect server on PostgreSQL (README: The service under load)",
            file=sys.stderr,
        )
    sys.stderr.flush()

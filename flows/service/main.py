"""The service's process: the front's endpoints and the runners on one NATS connection,
until SIGINT or SIGTERM; `main` starts the embedded defaults where nothing is configured."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

import nats.micro
from pydantic import ValidationError

from agents.adapters.nats import JetStreamBus
from agents.adapters.secrets import nats_token
from agents.errors import ConfigurationError, EventBusError, describe_validation_error
from agents.service import ENDPOINTS, HOST_METADATA, SERVICE_NAME, SERVICE_VERSION
from agents.settings import Settings
from flows.service.endpoints import DeliberationService, Endpoints
from flows.service.runner import Runner


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

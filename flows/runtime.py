"""Embedded defaults for a local run: start whatever is not configured.

- NATS_URL unset: a nats-server with JetStream, state in a temp dir.
- VLLM_URL unset: the local CPU model server (the `local` extra).
- PREFECT_API_URL unset: one temporary Prefect API on the default database, shared by
  the flow and every Ray worker. Prefect's own ephemeral mode would start one server per
  Ray worker; this one reaches the workers through the task context Prefect serializes.
  Runs stay in the database, so `prefect server start` shows them afterwards.
Everything started here is stopped on exit, Ctrl-C or error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from prefect.logging import get_logger
from prefect.logging.handlers import APILogWorker
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_ray import RayTaskRunner

from agents.embedded import LocalModelServer, LocalNatsServer
from agents.settings import Settings

log = get_logger("deliberation")

PREFECT_API_STARTUP_SECONDS = 60


@contextmanager
def embedded_servers(settings: Settings) -> Iterator[Settings]:
    """Yield settings that point at a configured or a freshly started NATS and model server."""
    with ExitStack() as stack:
        started: dict[str, str] = {}
        if settings.nats_url is None:
            nats = stack.enter_context(LocalNatsServer())
            started["NATS_URL"] = nats.url
            log.info("started nats-server at %s (JetStream, temporary state)", nats.url)
        if settings.vllm_url is None:
            model = stack.enter_context(LocalModelServer())
            started["VLLM_URL"] = model.url
            log.info("started the local model server at %s (logs: %s)", model.url, model.log_path)
        # Local Ray workers inherit the environment of the process that starts Ray.
        os.environ.update(started)
        yield Settings()


@contextmanager
def prefect_api() -> Iterator[None]:
    """Use PREFECT_API_URL if set; else one temporary API for this process and its Ray workers."""
    if PREFECT_API_URL.value():
        yield
        return
    api = SubprocessASGIServer()
    try:
        api.start(timeout=PREFECT_API_STARTUP_SECONDS)
        with temporary_settings({PREFECT_API_URL: api.api_url}):
            try:
                yield
            finally:
                # Send buffered run logs while the API is still there to receive them.
                APILogWorker.drain_all(timeout=5)
    finally:
        api.stop()


def task_runner(settings: Settings) -> RayTaskRunner:
    # Worker output stays out of the CLI's stdout; task logs go to the Prefect API.
    return RayTaskRunner(address=settings.ray_address, init_kwargs={"log_to_driver": False})

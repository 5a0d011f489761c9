"""Embedded defaults for a local run: start whatever is not configured.

- NATS_URL unset: a nats-server with JetStream, its state under DELIBERATION_STATE_DIR
  (so `python -m flows.result ID` finds a local run's result afterwards).
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
def local_nats(settings: Settings) -> Iterator[str | None]:
    """Start nats-server on the local state directory unless NATS_URL is set; yields the
    URL it started (None if nothing was started)."""
    if settings.nats_url is not None:
        yield None
        return
    with LocalNatsServer(store_dir=settings.state_dir / "jetstream") as nats:
        log.info("started nats-server at %s (JetStream state in %s)", nats.url, nats.store_dir)
        if not nats.persistent:
            log.warning(
                "another local run holds %s: this run's events and result last only while it runs",
                settings.state_dir,
            )
        yield nats.url


@contextmanager
def embedded_servers(settings: Settings) -> Iterator[Settings]:
    """Yield settings that point at a configured or a freshly started NATS and model server."""
    with ExitStack() as stack:
        started: dict[str, str] = {}
        nats_url = stack.enter_context(local_nats(settings))
        if nats_url is not None:
            started["NATS_URL"] = nats_url
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

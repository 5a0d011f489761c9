"""The temporary Prefect API a local run starts: Prefect's own server app, in its own
process, with 503 answers retried inside the server within milliseconds.

Why: on SQLite (the local default) a write that meets another connection's newer commit
fails at once with "database is locked", whatever the busy timeout. Prefect answers 503
and its client waits 2 s (then 4, 8, ...) before trying again. Five agents starting at
once each write their state, their tag slots and the `llm-calls` slot, so most stages
lost about 2 s to that wait on one agent or another (BENCHMARKS.md, finding 4). A 503
means the request was rolled back and may be sent again, which is what Prefect's client
does; doing it here, a few milliseconds later, changes when, not what.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from prefect.settings import get_current_settings

from flows.runtime.embedded import ManagedProcess, answers_200

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SERVICE_UNAVAILABLE = 503
STARTUP_SECONDS = 60.0
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class RetryUnavailable:
    """ASGI middleware: an HTTP request answered 503 is run again, after 5, 10, 20 ... ms
    (`delays`); the last 503 goes to the client, whose own retries then apply."""

    def __init__(self, app: ASGIApp, delays: tuple[float, ...] = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32)):
        self.app = app
        self.delays = delays

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan and the events websocket pass through
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        for delay in self.delays:
            if await self._attempt(scope, body, receive, send, last=False):
                return
            await asyncio.sleep(delay)
        await self._attempt(scope, body, receive, send, last=True)

    async def _attempt(self, scope: Scope, body: bytes, receive: Receive, send: Send, *, last: bool) -> bool:
        """Run the app once; True if its answer went to the client, False if it was a 503
        that was held back to try again."""
        replayed = False
        held_back = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only a disconnect can come

        async def forward(message: Message) -> None:
            nonlocal held_back
            if message["type"] == "http.response.start":
                held_back = message["status"] == SERVICE_UNAVAILABLE and not last
            if not held_back:
                await send(message)

        try:
            # A copy: Starlette's routing rewrites the scope (root_path, path params),
            # and a second pass over a rewritten one finds no route.
            await self.app(dict(scope), replay, forward)
        except Exception:
            # Starlette re-raises the exception behind a 500/503 after sending it; the
            # final attempt's goes on to be logged as Prefect's always is.
            if not held_back:
                raise
        return not held_back


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def create_app() -> ASGIApp:
    """uvicorn's factory in the API's process: Prefect's app behind RetryUnavailable."""
    from prefect.server.api.server import create_app as create_prefect_app

    return RetryUnavailable(create_prefect_app(ephemeral=True, final=True))


class TemporaryPrefectAPI(ManagedProcess):
    """Prefect's server app (create_app) under uvicorn, on a free loopback port, its output
    in a log file. It reads its settings from the environment and the active profile, as
    `prefect server start` does: PREFECT_API_DATABASE_CONNECTION_URL and the rest apply."""

    name = "prefect-api"

    def __init__(self, startup_timeout: float = STARTUP_SECONDS) -> None:
        # The task-run recorder writes one row per state change by default; in batches of
        # up to 100 it costs the API a third of the CPU per task run (BENCHMARKS.md).
        # A value in the environment wins.
        # Flushed every 2 s rather than 5, so the UI and the CLI's live view are at most
        # 2 s behind (flushing every 0.5 s cost the API four times the CPU per call; BENCHMARKS.md).
        # Nor does a throwaway server send telemetry (offline, it logs an error).
        defaults = {
            "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
            "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "2",
            # The event persister's 20 at a time fell behind in a burst: the in-memory
            # broker's queues (10,000) filled and it dropped events. (deploy/k8s's server,
            # on PostgreSQL, has larger batches still, so that a restart of its database
            # costs no events: BENCHMARKS.md.)
            "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "200",
            "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "2",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        env = {"PREFECT_UI_ENABLED": "false"} | {
            name: os.environ.get(name, value) for name, value in defaults.items()
        }
        super().__init__(startup_timeout, env=env)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def csrf_protected(self) -> bool:
        """Whether it wants CSRF tokens from clients: it reads the setting as we do."""
        return get_current_settings().server.api.csrf_protection_enabled

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn",
            "--app-dir", str(PROJECT_ROOT),
            "--factory", f"{__name__}:create_app",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--log-level", "error",
            "--lifespan", "on",
        ]  # fmt: skip

    def is_ready(self) -> bool:
        return answers_200(f"{self.api_url}/health")

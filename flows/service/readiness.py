"""Whether a service process is ready to run deliberations. A runner is not ready until its
model server answers: vLLM takes minutes to load its weights, and a service that exited then
crash-looped into Kubernetes' back-off. Meanwhile it answers discovery and submits (the
intake keeps them), and says why it waits: in its log, and in its ready file for a probe
(DELIBERATION_SERVICE_READY_FILE, read by deploy/k8s/base/service_probe.py)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path

from agents.errors import ConfigurationError
from agents.settings import Settings
from flows.runtime.preflight import check_default_endpoint

READY = "ready"
ASK_AGAIN_SECONDS = 5.0
SAY_AGAIN_SECONDS = 60.0  # the same reason, said again in the log


class ReadyFile:
    """The ready file, if one is configured: `ready`, or `waiting: <why>`; gone on exit."""

    def __init__(self, path: Path | None) -> None:
        self._path = path

    def say(self, state: str) -> None:
        if self._path is not None:
            partial = self._path.with_name(self._path.name + ".partial")
            partial.write_text(state + "\n")
            partial.replace(self._path)  # a probe never reads half a line

    def remove(self) -> None:
        if self._path is not None:
            self._path.unlink(missing_ok=True)


async def until_model_server_answers(settings: Settings, stop: asyncio.Event, ready: ReadyFile) -> bool:
    """Ask the default model endpoint every few seconds until it answers (True) or `stop`
    is set (False); each reason it does not is said once a minute, on stderr and in the
    ready file."""
    said, said_at = "", 0.0
    while not stop.is_set():
        try:
            await asyncio.to_thread(check_default_endpoint, settings)
            return True
        except ConfigurationError as exc:
            why = str(exc)
        ready.say(f"waiting: {why}")
        if why != said or time.monotonic() - said_at > SAY_AGAIN_SECONDS:
            print(
                f"service: waiting for the model server: {why}; submits are taken meanwhile and "
                "wait in the intake",
                file=sys.stderr,
                flush=True,
            )
            said, said_at = why, time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), ASK_AGAIN_SECONDS)
    return False

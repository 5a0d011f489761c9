"""Cancelling a flow run that runs in this process: from the Prefect UI or API (the flow
run goes to Cancelling), or from the deliberation service's `cancel`, which does the same.

A Prefect worker stops a cancelled flow run by killing its process; a flow run that runs in
a process of ours (the CLI, the service's runners) is stopped by nobody. So the flow runs of
a process register here, and one thread polls the API for all of them at once; a flow run
that is Cancelling gets its signal set, and its stages stop at the next check.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.context import SyncClientContext
from prefect.logging import get_logger
from prefect.settings import PREFECT_API_URL

POLL_SECONDS = 1.0
CANCELLED_IN_PREFECT = "the flow run was cancelled in Prefect"
log = get_logger("deliberation")
T = TypeVar("T")


class CancelSignal:
    """Set once the flow run is to stop; `reason` says who asked."""

    def __init__(self, ask_now: Callable[[], str | None] | None = None) -> None:
        self._event = threading.Event()
        self._ask_now = ask_now
        self.reason = ""

    def confirm(self) -> bool:
        """Whether the flow run is cancelled, asking the API now rather than at the next
        poll: a Prefect worker cancelling a deployment's flow run sends its process SIGTERM
        as soon as the run is Cancelling, well before the poll."""
        if not self.is_set and self._ask_now is not None:
            with contextlib.suppress(Exception):  # the API away: not known to be cancelled
                why = self._ask_now()
                if why is not None:
                    self.set(why)
        return self.is_set

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()


class _Watcher:
    """The process's one poller: started with the first registration, idle without any.

    Each flow run is polled on the API its registration saw. The API is a context variable
    (the CLI's temporary API, a test harness) that a thread does not inherit: polling in
    the thread's own context asked Prefect's ephemeral server, which the poll started, for
    flow runs it never had, so a cancel from the UI was never seen."""

    def __init__(self) -> None:
        self._signals: dict[UUID, CancelSignal] = {}
        self._contexts: dict[UUID, contextvars.Context] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def register(self, flow_run_id: UUID) -> CancelSignal:
        with self._lock:
            context = contextvars.copy_context()
            signal = self._signals.setdefault(
                flow_run_id, CancelSignal(partial(_run_in, context, self._cancelled_one, flow_run_id))
            )
            self._contexts[flow_run_id] = context
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._poll, name="cancellation", daemon=True)
                self._thread.start()
            return signal

    def unregister(self, flow_run_id: UUID) -> None:
        with self._lock:
            self._signals.pop(flow_run_id, None)
            self._contexts.pop(flow_run_id, None)

    def _poll(self) -> None:
        while True:
            time.sleep(POLL_SECONDS)
            with self._lock:
                by_api: dict[str, tuple[contextvars.Context, list[UUID]]] = {}
                for flow_run_id, context in self._contexts.items():
                    url = str(_run_in(context, PREFECT_API_URL.value))
                    by_api.setdefault(url, (context, []))[1].append(flow_run_id)
            for context, ids in by_api.values():
                try:
                    cancelling = _run_in(context, self._cancelling, ids)
                except Exception as exc:  # the API flaking: the next poll asks again
                    log.debug("cannot read the flow runs' states: %s", exc)
                    continue
                with self._lock:
                    for flow_run_id, why in cancelling:
                        if flow_run_id in self._signals:
                            self._signals[flow_run_id].set(why)

    @classmethod
    def _cancelled_one(cls, flow_run_id: UUID) -> str | None:
        return next((why for _, why in cls._cancelling([flow_run_id])), None)

    @staticmethod
    def _cancelling(ids: list[UUID]) -> list[tuple[UUID, str]]:
        """The flow runs among `ids` that are Cancelling (or already Cancelled), each with its
        state's message: who cancelled it and why, if they said."""
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=ids),
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.CANCELLING, StateType.CANCELLED])
                    ),
                )
            )
        return [(run.id, (run.state.message if run.state else None) or CANCELLED_IN_PREFECT) for run in runs]


def _run_in(context: contextvars.Context, fn: Callable[..., T], *args: Any) -> T:
    """`fn` with the Prefect settings (the API) of the thread that made `context`. In a copy
    of it each time: a context is entered by one thread at a time, and the flow's thread
    and the poller both ask. And without that thread's client (the flow engine's, in the
    context), which is not for another thread to use: `get_client` makes one of its own."""

    def call() -> T:
        SyncClientContext.__var__.set(None)  # type: ignore[arg-type]
        return fn(*args)

    return context.copy().run(call)


_watcher = _Watcher()


@contextmanager
def cancel_signal(flow_run_id: UUID) -> Iterator[CancelSignal]:
    """The signal that this flow run was cancelled, for as long as the block runs."""
    signal = _watcher.register(flow_run_id)
    try:
        yield signal
    finally:
        _watcher.unregister(flow_run_id)

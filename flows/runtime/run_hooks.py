"""What a process wants done when one of its flow runs of `deliberate` starts (the service
records the flow run's id). Prefect ships the flow, hooks included, to the call hosts, so
the hook is a plain function of a module that is never `__main__`: it pickles by reference,
and the callbacks it looks up stay in this process."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prefect.client.schemas.objects import FlowRun
from prefect.states import State

_callbacks: dict[str, Callable[[str], None]] = {}
_lock = threading.Lock()


@contextmanager
def when_started(deliberation_id: str, callback: Callable[[str], None]) -> Iterator[None]:
    """While the block runs, `callback(flow_run_id)` when the deliberation's flow run starts."""
    with _lock:
        _callbacks[deliberation_id] = callback
    try:
        yield
    finally:
        with _lock:
            _callbacks.pop(deliberation_id, None)


def on_running(flow: Any, flow_run: FlowRun, state: State[Any]) -> None:
    """The flow's on_running hook."""
    request = flow_run.parameters.get("request") or {}
    deliberation_id = request.get("deliberation_id") if isinstance(request, dict) else None
    with _lock:
        callback = _callbacks.get(str(deliberation_id))
    if callback is not None:
        callback(str(flow_run.id))

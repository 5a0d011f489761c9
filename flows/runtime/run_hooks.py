"""What a process wants told about its flow runs of `deliberate`: when one starts (the
service records the flow run's id), and when one has stored its result and is about to
announce it (the service records it concluded first, so that whoever reacts to the final
event and asks `get` reads the outcome). Prefect ships the flow, hooks included, to the
call hosts, so the hook is a plain function of a module that is never `__main__`: it
pickles by reference, and the callbacks it looks up stay in this process."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prefect.client.schemas.objects import FlowRun
from prefect.logging import get_logger
from prefect.states import State

log = get_logger("deliberation")


@dataclass(frozen=True)
class Watch:
    started: Callable[[str], None]  # the flow run's id
    concluding: Callable[[Any], None] | None = None  # the stored result, before it is announced


_watches: dict[str, Watch] = {}
_lock = threading.Lock()


@contextmanager
def watching(deliberation_id: str, watch: Watch) -> Iterator[None]:
    """While the block runs, the deliberation's flow run tells `watch`."""
    with _lock:
        _watches[deliberation_id] = watch
    try:
        yield
    finally:
        with _lock:
            _watches.pop(deliberation_id, None)


def _watch(deliberation_id: object) -> Watch | None:
    with _lock:
        return _watches.get(str(deliberation_id))


def on_running(flow: Any, flow_run: FlowRun, state: State[Any]) -> None:
    """The flow's on_running hook."""
    request = flow_run.parameters.get("request") or {}
    deliberation_id = request.get("deliberation_id") if isinstance(request, dict) else None
    watch = _watch(deliberation_id)
    if watch is not None:
        watch.started(str(flow_run.id))


def before_announcing(deliberation_id: str, result: Any) -> None:
    """Called by the flow run once its result is stored, before its final event. A watcher
    that fails is logged, never the run's failure: the run's return tells it again."""
    watch = _watch(deliberation_id)
    if watch is None or watch.concluding is None:
        return
    try:
        watch.concluding(result)
    except Exception as exc:
        log.warning("deliberation %s: telling its watcher it concluded failed: %s", deliberation_id, exc)

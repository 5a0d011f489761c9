"""`EventBus` runs a JetStreamBus on a private event-loop thread, so synchronous code (the
Prefect flow, which waits on Ray futures) can share one long-lived connection per process."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

from agents.adapters.nats.bus import JetStreamBus
from agents.adapters.nats.connection import longest_connect
from agents.adapters.nats.ledger import Ledger
from agents.adapters.nats.publisher import PublishReceipt, longest_publish
from agents.config import BusConfig
from agents.errors import EventBusError
from agents.events import Event
from agents.models import DeliberationResult, StageCall

T = TypeVar("T")

# Every blocking call waits by one rule: longer than the bus's own timeouts let an
# operation run, so a failure reaches the caller as the bus's error naming its cause, and
# this limit only ends a hang. The longest bounded operations are connecting and a publish
# sent with all its retries; the margin covers the few requests around them (the streams
# after connecting, a bucket before a put). Reads of the ledger and of the stored events
# page through all that was recorded, so they last as long as there is to read rather
# than as one request: no call is given less than READ_SECONDS.
MARGIN_SECONDS = 15.0
READ_SECONDS = 60.0


def blocking_wait(config: BusConfig) -> float:
    """How long an EventBus call waits for its answer (the rule above)."""
    slowest = max(longest_connect(config), longest_publish(config.publish_timeout))
    return max(slowest + MARGIN_SECONDS, READ_SECONDS)


class EventBus:
    """A blocking handle on a JetStreamBus running on its own loop thread."""

    def __init__(self, config: BusConfig) -> None:
        self._wait = blocking_wait(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="event-bus", daemon=True)
        self._bus: JetStreamBus | None = None

    @classmethod
    def connect(cls, config: BusConfig) -> EventBus:
        bus = cls(config)
        bus._thread.start()
        try:
            bus._bus = bus._run(JetStreamBus.connect(config))
        except BaseException:
            bus._stop_loop()
            raise
        return bus

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self._wait)
        except TimeoutError:
            future.cancel()
            raise EventBusError(f"NATS did not answer within {self._wait:.0f} s") from None

    @property
    def _client(self) -> JetStreamBus:
        if self._bus is None:
            raise EventBusError("the event bus is closed")
        return self._bus

    def publish(self, event: Event) -> PublishReceipt:
        return self.publish_all([event])[0]

    def publish_all(self, events: Sequence[Event]) -> list[PublishReceipt]:
        return self._run(self._client.publish_all(events))

    def open_ledger(self, deliberation_id: str, request_digest: str, started_at: datetime) -> Ledger:
        return self._run(self._client.open_ledger(deliberation_id, request_digest, started_at))

    def check_request(self, deliberation_id: str, request_digest: str) -> None:
        self._run(self._client.check_request(deliberation_id, request_digest))

    def record_calls(self, deliberation_id: str, calls: Sequence[StageCall]) -> None:
        self._run(self._client.record_calls(deliberation_id, calls))

    def read_events(self, deliberation_id: str | None = None, since: datetime | None = None) -> list[Event]:
        return self._run(self._client.read_events(deliberation_id, since))

    def ensure_buckets(self) -> None:
        self._run(self._client.ensure_buckets())

    def save_result(self, result: DeliberationResult) -> int:
        return self._run(self._client.save_result(result))

    def load_result(self, deliberation_id: str) -> DeliberationResult | None:
        return self._run(self._client.load_result(deliberation_id))

    def mark_announced(self, deliberation_id: str) -> None:
        self._run(self._client.mark_announced(deliberation_id))

    def was_announced(self, deliberation_id: str) -> bool:
        return self._run(self._client.was_announced(deliberation_id))

    def close(self) -> None:
        if self._bus is not None:
            try:
                self._run(self._bus.close())
            finally:
                self._bus = None
                self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> EventBus:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

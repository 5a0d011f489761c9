"""The async client: one long-lived connection per process and everything the pipeline
does on NATS through it, each kept in the module that does it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from nats.aio.client import Client as NATS

from agents.adapters.nats import ledger, publisher, reader, results, streams
from agents.adapters.nats.buckets import Buckets
from agents.adapters.nats.connection import open_connection
from agents.adapters.nats.intake import Intake
from agents.config import BusConfig
from agents.errors import EventBusError
from agents.events import Event
from agents.models import DeliberationResult, StageCall


class JetStreamBus:
    """The async client; close it to drain the connection."""

    def __init__(self, nc: NATS, config: BusConfig) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=config.publish_timeout)
        self._config = config
        self._buckets = Buckets(self._js, config)

    @classmethod
    async def connect(cls, config: BusConfig) -> JetStreamBus:
        """Connect and make sure the streams exist. Raises EventBusError if NATS cannot be
        reached within the connect timeout; after that, lost connections are retried."""
        bus = cls(await open_connection(config), config)
        try:
            await bus.ensure_streams()
        except EventBusError:
            await bus._nc.close()
            raise
        return bus

    async def ensure_streams(self) -> None:
        """Create the event streams, or bring their settings up to date; idempotent."""
        await streams.ensure_streams(self._js, self._config)

    async def publish(self, event: Event) -> publisher.PublishReceipt:
        """Publish and wait for the stream's ack, sending again after a lost one
        (see `publisher.publish`)."""
        return await publisher.publish(self._js, event)

    async def publish_all(self, events: Sequence[Event]) -> list[publisher.PublishReceipt]:
        """Publish these events at once and wait for every ack."""
        return await publisher.publish_all(self._js, events)

    async def read_events(
        self, deliberation_id: str | None = None, since: datetime | None = None
    ) -> list[Event]:
        """Stored events of ours (of one deliberation, published at or after `since`)."""
        return await reader.read_events(self._js, deliberation_id, since)

    async def ensure_buckets(self) -> None:
        """Create the result and call buckets unless they exist (their settings are the
        creator's)."""
        for name in (results.RESULTS_BUCKET, ledger.CALLS_BUCKET):
            await self._buckets.open(name)

    async def open_ledger(
        self, deliberation_id: str, request_digest: str, started_at: datetime
    ) -> ledger.Ledger:
        """This deliberation's call ledger, new or as recorded (see `ledger.open_ledger`)."""
        return await ledger.open_ledger(self._buckets, deliberation_id, request_digest, started_at)

    async def check_request(self, deliberation_id: str, request_digest: str) -> None:
        """Refuse an id first used for another request (see `ledger.check_request`)."""
        await ledger.check_request(self._buckets, deliberation_id, request_digest)

    async def record_calls(self, deliberation_id: str, calls: Sequence[StageCall]) -> None:
        """Record finished calls in the ledger, before anything is published about them."""
        await ledger.record_calls(self._buckets, deliberation_id, calls)

    async def save_result(self, result: DeliberationResult) -> int:
        """Store the result under its deliberation id; returns the key's revision."""
        return await results.save_result(self._buckets, result, self._nc.max_payload)

    async def load_result(self, deliberation_id: str) -> DeliberationResult | None:
        """The stored result, or None if there is none for this id."""
        return await results.load_result(self._buckets, deliberation_id)

    async def mark_announced(self, deliberation_id: str) -> None:
        """Record that the final event of this deliberation was published."""
        await results.mark_announced(self._buckets, deliberation_id)

    async def was_announced(self, deliberation_id: str) -> bool:
        """Whether a run published this deliberation's final event."""
        return await results.was_announced(self._buckets, deliberation_id)

    @property
    def client(self) -> NATS:
        """The connection, for what runs beside the pipeline's own use of it (the service's
        endpoints)."""
        return self._nc

    def intake(self, ack_wait: float) -> Intake:
        """The deliberation service's intake and status records on this connection."""
        return Intake(self._js, self._buckets, self._config, ack_wait)

    async def close(self) -> None:
        if not self._nc.is_closed:
            await self._nc.drain()

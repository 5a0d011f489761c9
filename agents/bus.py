"""The one event publisher: NATS JetStream, acks awaited, de-duplicated by message id.

`JetStreamBus` is the async client. `EventBus` runs it on a private event loop thread so
synchronous code (the Prefect flow, which waits on Ray futures) can share one long-lived
connection per process.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field, SecretStr

from agents.errors import EventBusError
from agents.events import STREAM_SUBJECTS, Event, parse_event
from agents.llm import redact_url
from agents.models import DeliberationResult

log = logging.getLogger(__name__)
T = TypeVar("T")

# Results, keyed by deliberation id (ids are valid key-value keys by construction).
RESULTS_BUCKET = "DELIBERATION_RESULTS"


class BusConfig(BaseModel):
    url: str
    token: SecretStr | None = None
    creds_file: Path | None = None
    tls_ca_file: Path | None = Field(default=None, description="CA bundle that signed the server's cert.")
    tls_cert_file: Path | None = Field(default=None, description="Client certificate, for mutual TLS.")
    tls_key_file: Path | None = None
    connect_timeout: float = 5.0
    publish_timeout: float = 10.0
    stream_max_age_seconds: float = 7 * 24 * 3600.0
    stream_duplicate_window_seconds: float = 24 * 3600.0
    stream_max_msgs: int = -1
    stream_discard: Literal["old", "new"] = "old"
    stream_storage: Literal["file", "memory"] = "file"
    stream_replicas: int = 1
    results_max_age_seconds: float = Field(default=0.0, ge=0, description="0: keep results forever.")


def _tls_context(config: BusConfig) -> ssl.SSLContext | None:
    """TLS for tls:// URLs or when certificates are given: the system's CAs unless a CA
    file is named; a client certificate for servers that verify clients."""
    wants_tls = config.url.startswith("tls://") or config.tls_ca_file or config.tls_cert_file
    if not wants_tls:
        return None
    try:
        context = ssl.create_default_context(cafile=str(config.tls_ca_file) if config.tls_ca_file else None)
        if config.tls_cert_file is not None:
            context.load_cert_chain(
                str(config.tls_cert_file), str(config.tls_key_file) if config.tls_key_file else None
            )
    except (OSError, ssl.SSLError) as exc:
        raise EventBusError(f"cannot load the NATS TLS files: {exc}") from None
    return context


class PublishReceipt(BaseModel):
    stream: str
    seq: int
    duplicate: bool


class JetStreamBus:
    def __init__(self, nc: NATS, config: BusConfig) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=config.publish_timeout)
        self._config = config
        self._results: KeyValue | None = None

    @classmethod
    async def connect(cls, config: BusConfig) -> JetStreamBus:
        """Connect and make sure the streams exist. Raises EventBusError if NATS cannot be
        reached within the connect timeout; after that, lost connections are retried."""
        nc = NATS()
        where = redact_url(config.url)
        connected = asyncio.Event()
        first_errors: list[Exception] = []

        async def report(exc: Exception) -> None:
            # Before the first connection the caller gets one clear error instead, naming
            # the cause nats-py only reports here (say, an authorization violation).
            if not connected.is_set():
                first_errors.append(exc)
            log.log(logging.WARNING if connected.is_set() else logging.DEBUG, "NATS: %s", exc)

        options: dict[str, Any] = {
            "servers": [config.url],
            "connect_timeout": config.connect_timeout,
            "allow_reconnect": True,
            # nats-py retries a first connect forever when reconnects are unlimited.
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0.5,
            "error_cb": report,
        }
        if config.token is not None:
            options["token"] = config.token.get_secret_value()
        if config.creds_file is not None:
            options["user_credentials"] = str(config.creds_file)
        tls = _tls_context(config)
        if tls is not None:
            options["tls"] = tls
        try:
            await asyncio.wait_for(nc.connect(**options), timeout=config.connect_timeout * 3)
        except (TimeoutError, OSError, NatsError) as exc:
            await nc.close()
            cause = first_errors[-1] if first_errors else exc
            raise EventBusError(
                f"cannot reach NATS at {where}: {type(cause).__name__} {cause}; "
                "check NATS_URL and its credentials, and that nats-server runs with -js"
            ) from None
        connected.set()
        # Once connected, ride out server restarts: reconnect for as long as it takes.
        nc.options["max_reconnect_attempts"] = -1
        bus = cls(nc, config)
        try:
            await bus.ensure_streams()
        except EventBusError:
            await nc.close()
            raise
        return bus

    async def ensure_streams(self) -> None:
        """Create the event streams, or bring their settings up to date; idempotent."""
        for name, subjects in STREAM_SUBJECTS.items():
            stream = StreamConfig(
                name=name,
                subjects=subjects,
                max_age=self._config.stream_max_age_seconds,
                duplicate_window=min(
                    self._config.stream_duplicate_window_seconds,
                    self._config.stream_max_age_seconds,
                ),
                max_msgs=self._config.stream_max_msgs,
                discard=DiscardPolicy(self._config.stream_discard),
                storage=StorageType(self._config.stream_storage),
                num_replicas=self._config.stream_replicas,
            )
            try:
                await self._js.add_stream(stream)
            except BadRequestError:
                await self._js.update_stream(stream)
            except NatsError as exc:
                raise EventBusError(
                    f"cannot create stream {name}: {exc}; is JetStream enabled (-js)?"
                ) from None

    async def publish(self, event: Event) -> PublishReceipt:
        """Publish and wait for the stream's ack. A duplicate (same msg id within the
        stream's duplicate window) is acknowledged without being stored again."""
        try:
            ack = await self._js.publish(
                event.subject,
                event.model_dump_json().encode(),
                headers={"Nats-Msg-Id": event.msg_id},
            )
        except (NatsError, TimeoutError) as exc:
            raise EventBusError(
                f"publishing {event.subject} for {event.msg_id} failed: {type(exc).__name__} {exc}"
            ) from None
        return PublishReceipt(stream=ack.stream, seq=ack.seq, duplicate=bool(ack.duplicate))

    async def read_events(
        self, deliberation_id: str | None = None, since: datetime | None = None
    ) -> list[Event]:
        """Stored events (of one deliberation, published at or after `since`), validated,
        in stream order per stream."""
        events: list[Event] = []
        for name, subjects in STREAM_SUBJECTS.items():
            config = ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=30.0)
            if since is not None:
                config.deliver_policy = DeliverPolicy.BY_START_TIME
                config.opt_start_time = since.astimezone(UTC)
            reader = await self._js.pull_subscribe(subjects[0], stream=name, config=config)
            try:
                pending = (await reader.consumer_info()).num_pending
                while pending:
                    for msg in await reader.fetch(batch=min(pending, 256), timeout=5):
                        event = parse_event(msg.subject, msg.data)
                        if deliberation_id is None or event.deliberation_id == deliberation_id:
                            events.append(event)
                        pending = msg.metadata.num_pending
            finally:
                await reader.unsubscribe()
        return events

    async def _results_bucket(self, create: bool) -> KeyValue | None:
        if self._results is None:
            try:
                self._results = await self._js.key_value(RESULTS_BUCKET)
            except BucketNotFoundError:
                if not create:
                    return None
                self._results = await self._js.create_key_value(
                    KeyValueConfig(
                        bucket=RESULTS_BUCKET,
                        description="Deliberation results by deliberation id",
                        history=1,
                        ttl=self._config.results_max_age_seconds or None,
                        storage=StorageType(self._config.stream_storage),
                        replicas=self._config.stream_replicas,
                    )
                )
        return self._results

    async def ensure_results_bucket(self) -> None:
        """Create the result bucket unless it exists (its settings are the creator's)."""
        await self._results_bucket(create=True)

    async def save_result(self, result: DeliberationResult) -> int:
        """Store the result under its deliberation id (a retried run overwrites it);
        returns the key's revision."""
        data = result.model_dump_json().encode()
        limit = self._nc.max_payload
        if len(data) > limit:
            raise EventBusError(
                f"the result of {result.deliberation_id} is {len(data)} bytes, more than the NATS "
                f"server's max_payload of {limit}; raise max_payload in its configuration"
            )
        try:
            bucket = await self._results_bucket(create=True)
            assert bucket is not None
            return await bucket.put(result.deliberation_id, data)
        except (NatsError, TimeoutError) as exc:
            raise EventBusError(
                f"storing the result of {result.deliberation_id} in {RESULTS_BUCKET} failed: "
                f"{type(exc).__name__} {exc}"
            ) from None

    async def load_result(self, deliberation_id: str) -> DeliberationResult | None:
        """The stored result, or None if there is none for this id."""
        try:
            bucket = await self._results_bucket(create=False)
            if bucket is None:
                return None
            entry = await bucket.get(deliberation_id)
        except KeyNotFoundError:
            return None
        except (NatsError, TimeoutError) as exc:
            raise EventBusError(
                f"reading the result of {deliberation_id} failed: {type(exc).__name__} {exc}"
            ) from None
        if entry.value is None:
            return None
        return DeliberationResult.model_validate_json(entry.value)

    async def close(self) -> None:
        if not self._nc.is_closed:
            await self._nc.drain()


class EventBus:
    """A blocking handle on a JetStreamBus running on its own loop thread."""

    def __init__(self, config: BusConfig) -> None:
        self._config = config
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="event-bus", daemon=True)
        self._bus: JetStreamBus | None = None

    @classmethod
    def connect(cls, config: BusConfig) -> EventBus:
        bus = cls(config)
        bus._thread.start()
        try:
            bus._bus = bus._run(JetStreamBus.connect(config), config.connect_timeout * 3 + 5)
        except BaseException:
            bus._stop_loop()
            raise
        return bus

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise EventBusError(f"NATS did not answer within {timeout:.0f} s") from None

    @property
    def _client(self) -> JetStreamBus:
        if self._bus is None:
            raise EventBusError("the event bus is closed")
        return self._bus

    def publish(self, event: Event) -> PublishReceipt:
        return self._run(self._client.publish(event), self._config.publish_timeout + 5)

    def read_events(self, deliberation_id: str | None = None, since: datetime | None = None) -> list[Event]:
        return self._run(self._client.read_events(deliberation_id, since), 60)

    def ensure_results_bucket(self) -> None:
        self._run(self._client.ensure_results_bucket(), self._config.publish_timeout + 5)

    def save_result(self, result: DeliberationResult) -> int:
        return self._run(self._client.save_result(result), self._config.publish_timeout + 5)

    def load_result(self, deliberation_id: str) -> DeliberationResult | None:
        return self._run(self._client.load_result(deliberation_id), self._config.publish_timeout + 5)

    def close(self) -> None:
        if self._bus is not None:
            try:
                self._run(self._bus.close(), self._config.connect_timeout * 2)
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

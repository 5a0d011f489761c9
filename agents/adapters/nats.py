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
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

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
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field, ValidationError

from agents.adapters.llm import redact_url
from agents.config import BusConfig
from agents.errors import ConfigurationError, EventBusError
from agents.events import STREAM_SUBJECTS, Event, parse_event
from agents.models import DeliberationResult, StageCall

log = logging.getLogger(__name__)
T = TypeVar("T")

# Results, keyed by deliberation id (ids are valid key-value keys by construction).
RESULTS_BUCKET = "DELIBERATION_RESULTS"
# The call ledger: `<deliberation_id>` opens a deliberation, `<deliberation_id>.<call_id>`
# records each finished model call. What is recorded is final for that deliberation.
CALLS_BUCKET = "DELIBERATION_CALLS"
PUBLISH_ATTEMPTS = 4
PUBLISH_BACKOFF_SECONDS = 0.5


class LedgerHeader(BaseModel):
    """Written once, when a deliberation first starts."""

    deliberation_id: str
    request_digest: str = Field(description="What was asked; a rerun must ask the same.")
    started_at: datetime


class Ledger(BaseModel):
    """What a deliberation has already done, read from the call ledger."""

    started_at: datetime
    calls: dict[str, StageCall] = Field(default_factory=dict, description="By call id.")
    unreadable: int = Field(default=0, description="Records skipped because they did not validate.")


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
        self._buckets: dict[str, KeyValue] = {}

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
                try:
                    await self._js.update_stream(stream)
                except NatsError as exc:
                    raise EventBusError(
                        f"stream {name} exists with settings this run cannot change: {exc}; "
                        "align DELIBERATION_STREAM_* with it, or recreate the stream"
                    ) from None
            except NatsError as exc:
                raise EventBusError(
                    f"cannot create stream {name}: {exc}; is JetStream enabled (-js)?"
                ) from None

    async def publish(self, event: Event) -> PublishReceipt:
        """Publish and wait for the stream's ack. A duplicate (same msg id within the
        stream's duplicate window) is acknowledged without being stored again, which is
        what makes sending again after a lost ack safe: up to PUBLISH_ATTEMPTS times,
        waiting 0.5, 1, 2 s, for a server that is restarting. A refusal (say, a full
        stream) is not sent again."""
        data = event.model_dump_json().encode()
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                ack = await self._js.publish(event.subject, data, headers={"Nats-Msg-Id": event.msg_id})
                return PublishReceipt(stream=ack.stream, seq=ack.seq, duplicate=bool(ack.duplicate))
            except (NatsError, TimeoutError) as exc:
                # APIError: the stream answered and refused (say, it is full). Anything else
                # (a timeout, no responders while JetStream restarts) may have been lost.
                if isinstance(exc, APIError) or attempt == PUBLISH_ATTEMPTS:
                    raise EventBusError(
                        f"publishing {event.subject} for {event.msg_id} failed: {type(exc).__name__} {exc}"
                    ) from None
                log.warning("publishing %s failed (%s); sending it again", event.msg_id, type(exc).__name__)
                await asyncio.sleep(PUBLISH_BACKOFF_SECONDS * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    async def publish_all(self, events: Sequence[Event]) -> list[PublishReceipt]:
        """Publish these events at once and wait for every ack (each as `publish`): events
        that are ready together cost one round trip, not one each."""
        return list(await asyncio.gather(*(self.publish(event) for event in events)))

    async def read_events(
        self, deliberation_id: str | None = None, since: datetime | None = None
    ) -> list[Event]:
        """Stored events (of one deliberation, published at or after `since`), validated,
        in stream order per stream. The subjects are shared with other services: a message
        that is not a valid event of ours (another schema, a newer schema_version, not JSON)
        is skipped, and the count logged."""
        events: list[Event] = []
        skipped = 0
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
                        pending = msg.metadata.num_pending
                        try:
                            event = parse_event(msg.subject, msg.data)
                        except ValueError:
                            skipped += 1
                            continue
                        if deliberation_id is None or event.deliberation_id == deliberation_id:
                            events.append(event)
            finally:
                await reader.unsubscribe()
        if skipped:
            log.warning("%d message(s) on the event subjects were not events of ours; skipped", skipped)
        return events

    async def _bucket(self, name: str, create: bool) -> KeyValue | None:
        if name not in self._buckets:
            try:
                self._buckets[name] = await self._js.key_value(name)
            except BucketNotFoundError:
                if not create:
                    return None
                self._buckets[name] = await self._js.create_key_value(
                    KeyValueConfig(
                        bucket=name,
                        description=f"{name.lower().replace('_', ' ')} by deliberation id",
                        history=1,
                        ttl=self._config.results_max_age_seconds or None,
                        storage=StorageType(self._config.stream_storage),
                        replicas=self._config.stream_replicas,
                    )
                )
        return self._buckets[name]

    async def ensure_results_bucket(self) -> None:
        """Create the result and call buckets unless they exist (their settings are the
        creator's)."""
        for name in (RESULTS_BUCKET, CALLS_BUCKET):
            await self._bucket(name, create=True)

    async def open_ledger(self, deliberation_id: str, request_digest: str, started_at: datetime) -> Ledger:
        """Open this deliberation's call ledger: a new one starts now; an existing one (a
        rerun, a retry, a restart after a crash) gives back its start and its recorded
        calls. Raises ConfigurationError if the id was first used for another request."""
        try:
            bucket = await self._bucket(CALLS_BUCKET, create=True)
            assert bucket is not None
            header = LedgerHeader(
                deliberation_id=deliberation_id, request_digest=request_digest, started_at=started_at
            )
            try:
                await bucket.create(deliberation_id, header.model_dump_json().encode())
                return Ledger(started_at=started_at)
            except KeyWrongLastSequenceError:
                entry = await bucket.get(deliberation_id)
            first = LedgerHeader.model_validate_json(entry.value or b"")
            if first.request_digest != request_digest:
                raise ConfigurationError(
                    f"deliberation {deliberation_id} was started with a different request; "
                    "reuse a deliberation id only to resume it, or choose a new one"
                )
            ledger = Ledger(started_at=first.started_at)
            watcher = await bucket.watch(f"{deliberation_id}.>", ignore_deletes=True)
            try:
                async for record in watcher:
                    if record is None:  # the watcher's "all delivered" marker
                        break
                    try:
                        call = StageCall.model_validate_json(record.value or b"")
                    except ValidationError:
                        ledger.unreadable += 1
                        continue
                    ledger.calls[call.call_id] = call
            finally:
                await watcher.stop()
        except (NatsError, TimeoutError, ValidationError) as exc:
            raise EventBusError(
                f"reading the call ledger of {deliberation_id} in {CALLS_BUCKET} failed: "
                f"{type(exc).__name__} {exc}"
            ) from None
        if ledger.unreadable:
            log.warning(
                "%d unreadable record(s) in the ledger of %s skipped", ledger.unreadable, deliberation_id
            )
        return ledger

    async def record_calls(self, deliberation_id: str, calls: Sequence[StageCall]) -> None:
        """Record finished calls in the ledger, all at once, before anything is published
        about them."""

        def failed(what: str, exc: Exception) -> EventBusError:
            return EventBusError(
                f"recording {what} of {deliberation_id} in {CALLS_BUCKET} failed: {type(exc).__name__} {exc}"
            )

        try:
            bucket = await self._bucket(CALLS_BUCKET, create=True)
        except (NatsError, TimeoutError) as exc:
            raise failed(", ".join(call.call_id for call in calls), exc) from None
        assert bucket is not None

        async def record(call: StageCall) -> None:
            try:
                await bucket.put(f"{deliberation_id}.{call.call_id}", call.model_dump_json().encode())
            except (NatsError, TimeoutError) as exc:
                raise failed(call.call_id, exc) from None

        await asyncio.gather(*(record(call) for call in calls))

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
            bucket = await self._bucket(RESULTS_BUCKET, create=True)
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
            bucket = await self._bucket(RESULTS_BUCKET, create=False)
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
        return self.publish_all([event])[0]

    def publish_all(self, events: Sequence[Event]) -> list[PublishReceipt]:
        attempts_time = (
            PUBLISH_ATTEMPTS * self._config.publish_timeout
            + 2 * PUBLISH_BACKOFF_SECONDS * 2**PUBLISH_ATTEMPTS
        )
        return self._run(self._client.publish_all(events), attempts_time)

    def open_ledger(self, deliberation_id: str, request_digest: str, started_at: datetime) -> Ledger:
        return self._run(self._client.open_ledger(deliberation_id, request_digest, started_at), 60)

    def record_calls(self, deliberation_id: str, calls: Sequence[StageCall]) -> None:
        self._run(self._client.record_calls(deliberation_id, calls), self._config.publish_timeout + 5)

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

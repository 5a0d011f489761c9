"""The deliberation service's durable intake: every accepted request is stored in a
work-queue stream before the service answers, and runners take requests from it with
explicit acks; each deliberation's status is a record in a key-value bucket, changed only
by compare-and-set so that a cancel and a runner starting it cannot both win.

A request stays in the stream until a runner acks it (concluded) or terminates it; a runner
that dies leaves it to be delivered again after the ack wait, to a runner that resumes it by
its id (the call ledger repeats no finished call). Deliveries are unlimited here: the runner
counts them and concludes a request that failed on every try, so none is lost in the stream.
"""

from __future__ import annotations

from collections.abc import Callable

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError

from agents.adapters.nats.buckets import Buckets
from agents.adapters.nats.publisher import send_until_acked
from agents.config import BusConfig
from agents.errors import EventBusError
from agents.models import DeliberationRequest
from agents.service import StatusRecord

INTAKE_STREAM = "DELIBERATION_INTAKE"
# `deliberation-intake.<deliberation id>`: not under `deliberation.>`, where consumers of the
# events and callers of the service's endpoints listen.
INTAKE_SUBJECT = "deliberation-intake"
RUNNERS = "deliberation-runners"  # the durable consumer every runner shares
STATUS_BUCKET = "DELIBERATION_STATUS"


class Intake:
    def __init__(self, js: JetStreamContext, buckets: Buckets, config: BusConfig, ack_wait: float) -> None:
        self._js = js
        self._buckets = buckets
        self._config = config
        self._ack_wait = ack_wait
        self._subscription: JetStreamContext.PullSubscription | None = None

    async def ensure(self) -> None:
        """Create the intake stream and the runners' consumer, or bring them up to date."""
        stream = StreamConfig(
            name=INTAKE_STREAM,
            subjects=[f"{INTAKE_SUBJECT}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            # A second submit of the same id within the window is stored once.
            duplicate_window=self._config.stream_duplicate_window_seconds,
            discard=DiscardPolicy.NEW,  # full: refuse new requests, never drop accepted ones
            storage=StorageType(self._config.stream_storage),
            num_replicas=self._config.stream_replicas,
        )
        consumer = ConsumerConfig(
            durable_name=RUNNERS,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait,
            max_deliver=-1,
            max_ack_pending=-1,
        )
        try:
            try:
                await self._js.add_stream(stream)
            except BadRequestError:
                await self._js.update_stream(stream)
            await self._js.add_consumer(INTAKE_STREAM, consumer)
        except NatsError as exc:
            raise EventBusError(f"cannot set up the intake stream {INTAKE_STREAM}: {exc}") from None

    async def enqueue(self, request: DeliberationRequest) -> None:
        """Store a request (its deliberation id set) for a runner; returns once JetStream
        acknowledged it. Raises EventBusError."""
        deliberation_id = request.deliberation_id or ""
        try:
            await self._js.publish(
                f"{INTAKE_SUBJECT}.{deliberation_id}",
                request.model_dump_json().encode(),
                stream=INTAKE_STREAM,
                headers={"Nats-Msg-Id": deliberation_id},
            )
        except (NatsError, TimeoutError) as exc:
            raise EventBusError(
                f"storing request {deliberation_id} in {INTAKE_STREAM} failed: {exc}"
            ) from None

    async def take(self, timeout: float) -> Msg | None:
        """The next request for this runner, or None if none came within `timeout`."""
        if self._subscription is None:
            self._subscription = await self._js.pull_subscribe_bind(RUNNERS, stream=INTAKE_STREAM)
        try:
            [msg] = await self._subscription.fetch(1, timeout=timeout)
        except (NatsTimeoutError, TimeoutError):
            return None
        return msg

    async def depth(self) -> tuple[int, int]:
        """Requests no runner has taken yet, and those taken and not finished."""
        try:
            info = await self._js.consumer_info(INTAKE_STREAM, RUNNERS)
        except (NatsError, TimeoutError) as exc:
            raise EventBusError(f"reading the depth of {INTAKE_STREAM}: {exc}") from None
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)

    async def close(self) -> None:
        """Stop taking requests (before the connection drains)."""
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            await subscription.unsubscribe()

    # The status records' round trips are each safe to repeat, and are asked again when
    # their answer is late (send_until_acked): in a runner that the burst saturates, a reply
    # can come after the client's timeout, and a timeout there sent a deliberation that
    # was running back to the queue, to run again elsewhere (issue 32).

    async def status(self, deliberation_id: str) -> tuple[StatusRecord, int] | None:
        """A deliberation's status record and its revision, or None if there is none."""
        bucket = await self._buckets.open(STATUS_BUCKET)
        try:
            entry = await send_until_acked(
                lambda: bucket.get(deliberation_id), f"reading the status of {deliberation_id}"
            )
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None:
            return None
        return StatusRecord.model_validate_json(entry.value), entry.revision

    async def create_status(self, record: StatusRecord) -> int | None:
        """Write the first status of a deliberation; its revision, or None if it already
        has one."""
        bucket = await self._buckets.open(STATUS_BUCKET)
        data = record.model_dump_json().encode()
        try:
            # Asked again after a late answer, a create that had landed finds the record:
            # None, as for a record someone else made first.
            return int(
                await send_until_acked(
                    lambda: bucket.create(record.deliberation_id, data),
                    f"creating the status of {record.deliberation_id}",
                )
            )
        except KeyWrongLastSequenceError:
            return None

    async def change_status(
        self, deliberation_id: str, change: Callable[[StatusRecord], StatusRecord | None]
    ) -> StatusRecord | None:
        """Apply `change` to the current status until it is written without a concurrent
        change in between; `change` returning None leaves the record as it is. Returns the
        record as it then stands (None if there is none)."""
        while (known := await self.status(deliberation_id)) is not None:
            record, revision = known
            changed = change(record)
            if changed is None:
                return record
            if await self.update_status(changed, revision):
                return changed
        return None

    async def update_status(self, record: StatusRecord, revision: int) -> bool:
        """Replace the status read at `revision`; False if it changed since."""
        bucket = await self._buckets.open(STATUS_BUCKET)
        data = record.model_dump_json().encode()
        try:
            # After a late answer, an update that had landed is refused as a change since:
            # change_status then reads it and finds its change made.
            await send_until_acked(
                lambda: bucket.update(record.deliberation_id, data, last=revision),
                f"updating the status of {record.deliberation_id}",
            )
        except KeyWrongLastSequenceError:
            return False
        return True

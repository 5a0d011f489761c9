"""The one event publisher: acks awaited, de-duplicated by message id, so sending again
after a lost ack is safe."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from nats.js.errors import APIError
from pydantic import BaseModel

from agents.errors import EventBusError
from agents.events import Event

log = logging.getLogger(__name__)

T = TypeVar("T")

PUBLISH_ATTEMPTS = 4
PUBLISH_BACKOFF_SECONDS = 0.5


class PublishReceipt(BaseModel):
    stream: str
    seq: int
    duplicate: bool


def _backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt `attempt` (from 1): 0.5, 1, 2 s."""
    return PUBLISH_BACKOFF_SECONDS * 2 ** (attempt - 1)


def longest_publish(publish_timeout: float) -> float:
    """How long `publish` may take: every attempt waiting out its timeout, with the
    backoff between them."""
    return PUBLISH_ATTEMPTS * publish_timeout + sum(_backoff(a) for a in range(1, PUBLISH_ATTEMPTS))


async def send_until_acked(send: Callable[[], Awaitable[T]], what: str) -> T:
    """`send()`, sent again after a lost ack: up to PUBLISH_ATTEMPTS times, waiting 0.5,
    1, 2 s, for a server that is restarting. For what is safe to send twice (a message
    de-duplicated by its id, a key set to the same value). A refusal (the stream answered
    no, or the message is over the server's limit) is not sent again; the last error is
    raised."""
    for attempt in range(1, PUBLISH_ATTEMPTS + 1):
        try:
            return await send()
        except (NatsError, TimeoutError) as exc:
            # Anything but a refusal (a timeout, no responders while JetStream restarts)
            # may have been lost.
            if isinstance(exc, APIError | MaxPayloadError) or attempt == PUBLISH_ATTEMPTS:
                raise
            log.warning("%s failed (%s); sending it again", what, type(exc).__name__)
            await asyncio.sleep(_backoff(attempt))
    raise AssertionError("unreachable")


async def publish(js: JetStreamContext, event: Event) -> PublishReceipt:
    """Publish and wait for the stream's ack. A duplicate (same msg id within the stream's
    duplicate window) is acknowledged without being stored again, which is what makes
    sending again after a lost ack safe (`send_until_acked`). A refusal (say, a full
    stream) is not sent again."""
    data = event.model_dump_json().encode()
    try:
        ack = await send_until_acked(
            lambda: js.publish(event.subject, data, headers={"Nats-Msg-Id": event.msg_id}),
            f"publishing {event.msg_id}",
        )
    except (NatsError, TimeoutError) as exc:
        raise EventBusError(
            f"publishing {event.subject} for {event.msg_id} failed: {type(exc).__name__} {exc}"
        ) from None
    return PublishReceipt(stream=ack.stream, seq=ack.seq, duplicate=bool(ack.duplicate))


async def publish_all(js: JetStreamContext, events: Sequence[Event]) -> list[PublishReceipt]:
    """Publish these events at once and wait for every ack (each as `publish`): events
    that are ready together cost one round trip, not one each."""
    return list(await asyncio.gather(*(publish(js, event) for event in events)))

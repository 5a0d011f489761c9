"""The one event publisher: acks awaited, de-duplicated by message id, so sending again
after a lost ack is safe."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import APIError
from pydantic import BaseModel

from agents.errors import EventBusError
from agents.events import Event

log = logging.getLogger(__name__)

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


async def publish(js: JetStreamContext, event: Event) -> PublishReceipt:
    """Publish and wait for the stream's ack. A duplicate (same msg id within the stream's
    duplicate window) is acknowledged without being stored again, which is what makes
    sending again after a lost ack safe: up to PUBLISH_ATTEMPTS times, waiting 0.5, 1, 2 s,
    for a server that is restarting. A refusal (say, a full stream) is not sent again."""
    data = event.model_dump_json().encode()
    for attempt in range(1, PUBLISH_ATTEMPTS + 1):
        try:
            ack = await js.publish(event.subject, data, headers={"Nats-Msg-Id": event.msg_id})
            return PublishReceipt(stream=ack.stream, seq=ack.seq, duplicate=bool(ack.duplicate))
        except (NatsError, TimeoutError) as exc:
            # APIError: the stream answered and refused (say, it is full). Anything else
            # (a timeout, no responders while JetStream restarts) may have been lost.
            if isinstance(exc, APIError) or attempt == PUBLISH_ATTEMPTS:
                raise EventBusError(
                    f"publishing {event.subject} for {event.msg_id} failed: {type(exc).__name__} {exc}"
                ) from None
            log.warning("publishing %s failed (%s); sending it again", event.msg_id, type(exc).__name__)
            await asyncio.sleep(_backoff(attempt))
    raise AssertionError("unreachable")


async def publish_all(js: JetStreamContext, events: Sequence[Event]) -> list[PublishReceipt]:
    """Publish these events at once and wait for every ack (each as `publish`): events
    that are ready together cost one round trip, not one each."""
    return list(await asyncio.gather(*(publish(js, event) for event in events)))

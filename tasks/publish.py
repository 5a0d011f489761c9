"""publish_event and store_result: NATS writes, run in the flow's process on its shared bus."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from agents.bus import EventBus, PublishReceipt
from agents.events import Event
from agents.models import DeliberationResult


@task(
    name="publish_event",
    task_run_name="publish-{event.msg_id}",
    retries=3,
    retry_delay_seconds=[1, 2, 4],
    cache_policy=NO_CACHE,
)
def publish_event(bus: EventBus, event: Event) -> PublishReceipt:
    """Publish with the ack awaited. Retrying is safe: the message id de-duplicates."""
    receipt = bus.publish(event)
    if receipt.duplicate:
        get_run_logger().warning(
            "%s %s was already published (stream %s seq %s); the first copy stands",
            event.subject,
            event.msg_id,
            receipt.stream,
            receipt.seq,
        )
    return receipt


@task(name="store_result", retries=3, retry_delay_seconds=[1, 2, 4], cache_policy=NO_CACHE)
def store_result(bus: EventBus, result: DeliberationResult) -> int:
    """Keep the result in the key-value bucket under its deliberation id, before the final
    event announces it, so a consumer reacting to the event can read it."""
    return bus.save_result(result)

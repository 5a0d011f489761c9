"""Reading back the stored events: the subjects are shared with other services, so what
is not a valid event of ours is skipped rather than failing the read."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agents.events import STREAM_SUBJECTS, Event, parse_event

log = logging.getLogger(__name__)


async def read_events(
    js: JetStreamContext, deliberation_id: str | None = None, since: datetime | None = None
) -> list[Event]:
    """Stored events (of one deliberation, published at or after `since`), validated, in
    stream order per stream. A message that is not a valid event of ours (another schema,
    a newer schema_version, not JSON) is skipped, and the count logged."""
    events: list[Event] = []
    skipped = 0
    for name, subjects in STREAM_SUBJECTS.items():
        # Every subject of the stream: the deliberations' stream names several.
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=30.0, filter_subjects=subjects)
        if since is not None:
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = since.astimezone(UTC)
        reader = await js.pull_subscribe(subjects[0], stream=name, config=config)
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

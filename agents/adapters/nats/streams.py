"""The event streams, sized by the configuration: created on connect, or brought up to
date in place so a changed setting takes effect without recreating what is stored."""

from __future__ import annotations

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from agents.config import BusConfig
from agents.errors import EventBusError
from agents.events import STREAM_SUBJECTS


async def ensure_streams(js: JetStreamContext, config: BusConfig) -> None:
    """Create the event streams, or bring their settings up to date; idempotent."""
    for name, subjects in STREAM_SUBJECTS.items():
        stream = StreamConfig(
            name=name,
            subjects=subjects,
            max_age=config.stream_max_age_seconds,
            duplicate_window=min(config.stream_duplicate_window_seconds, config.stream_max_age_seconds),
            max_msgs=config.stream_max_msgs,
            discard=DiscardPolicy(config.stream_discard),
            storage=StorageType(config.stream_storage),
            num_replicas=config.stream_replicas,
        )
        try:
            await js.add_stream(stream)
        except BadRequestError:
            try:
                await js.update_stream(stream)
            except NatsError as exc:
                raise EventBusError(
                    f"stream {name} exists with settings this run cannot change: {exc}; "
                    "align DELIBERATION_STREAM_* with it, or recreate the stream"
                ) from None
        except NatsError as exc:
            raise EventBusError(f"cannot create stream {name}: {exc}; is JetStream enabled (-js)?") from None

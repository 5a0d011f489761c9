"""NATS JetStream, the pipeline's one event bus: the event streams, the call ledger and the
stored results. `EventBus` is the blocking handle flows use; `JetStreamBus` the async client
under it."""

from agents.adapters.nats.blocking import EventBus
from agents.adapters.nats.bus import JetStreamBus
from agents.adapters.nats.ledger import CALLS_BUCKET, Ledger, LedgerHeader
from agents.adapters.nats.publisher import PublishReceipt
from agents.adapters.nats.results import RESULTS_BUCKET

__all__ = [
    "CALLS_BUCKET",
    "RESULTS_BUCKET",
    "EventBus",
    "JetStreamBus",
    "Ledger",
    "LedgerHeader",
    "PublishReceipt",
]

"""The stored results, keyed by deliberation id, so a result outlives the run that made it
and can be fetched by id later; and, beside each (`<id>.announced`), that its final event
was published, so a run that finds the result stored announces it only if no run did."""

from __future__ import annotations

from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError

from agents.adapters.nats.buckets import Buckets
from agents.errors import EventBusError
from agents.models import DeliberationResult

# Deliberation ids are valid key-value keys by construction.
RESULTS_BUCKET = "DELIBERATION_RESULTS"


async def save_result(buckets: Buckets, result: DeliberationResult, max_payload: int) -> int:
    """Store the result under its deliberation id (a retried run overwrites it); returns
    the key's revision. `max_payload` is the server's limit on one message."""
    data = result.model_dump_json().encode()
    if len(data) > max_payload:
        raise EventBusError(
            f"the result of {result.deliberation_id} is {len(data)} bytes, more than the NATS "
            f"server's max_payload of {max_payload}; raise max_payload in its configuration"
        )
    try:
        bucket = await buckets.open(RESULTS_BUCKET)
        return await bucket.put(result.deliberation_id, data)
    except (NatsError, TimeoutError) as exc:
        raise EventBusError(
            f"storing the result of {result.deliberation_id} in {RESULTS_BUCKET} failed: "
            f"{type(exc).__name__} {exc}"
        ) from None


async def load_result(buckets: Buckets, deliberation_id: str) -> DeliberationResult | None:
    """The stored result, or None if there is none for this id."""
    try:
        bucket = await buckets.find(RESULTS_BUCKET)
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


def _announced(deliberation_id: str) -> str:
    return f"{deliberation_id}.announced"


async def mark_announced(buckets: Buckets, deliberation_id: str) -> None:
    """Record that the deliberation's final event was published (and acked)."""
    try:
        bucket = await buckets.open(RESULTS_BUCKET)
        await bucket.put(_announced(deliberation_id), b"1")
    except (NatsError, TimeoutError) as exc:
        raise EventBusError(
            f"recording that {deliberation_id} was announced failed: {type(exc).__name__} {exc}"
        ) from None


async def was_announced(buckets: Buckets, deliberation_id: str) -> bool:
    """Whether a run published this deliberation's final event (mark_announced)."""
    try:
        bucket = await buckets.find(RESULTS_BUCKET)
        if bucket is None:
            return False
        entry = await bucket.get(_announced(deliberation_id))
    except KeyNotFoundError:
        return False
    except (NatsError, TimeoutError) as exc:
        raise EventBusError(
            f"reading whether {deliberation_id} was announced failed: {type(exc).__name__} {exc}"
        ) from None
    return entry.value is not None

"""The call ledger: every finished model call, recorded before anything is published about
it, so a rerun replays what was done instead of asking again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime

from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from pydantic import BaseModel, Field, ValidationError

from agents.adapters.nats.buckets import Buckets
from agents.adapters.nats.publisher import send_until_acked
from agents.errors import ConfigurationError, EventBusError
from agents.models import StageCall

log = logging.getLogger(__name__)

# `<deliberation_id>` opens a deliberation, `<deliberation_id>.<call_id>` records each
# finished model call. What is recorded is final for that deliberation.
CALLS_BUCKET = "DELIBERATION_CALLS"


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


async def open_ledger(
    buckets: Buckets, deliberation_id: str, request_digest: str, started_at: datetime
) -> Ledger:
    """Open this deliberation's call ledger: a new one starts now; an existing one (a
    rerun, a retry, a restart after a crash) gives back its start and its recorded
    calls. Raises ConfigurationError if the id was first used for another request."""
    try:
        bucket = await buckets.open(CALLS_BUCKET)
        header = LedgerHeader(
            deliberation_id=deliberation_id, request_digest=request_digest, started_at=started_at
        )
        try:
            await bucket.create(deliberation_id, header.model_dump_json().encode())
            return Ledger(started_at=started_at)
        except KeyWrongLastSequenceError:
            entry = await bucket.get(deliberation_id)
        first = LedgerHeader.model_validate_json(entry.value or b"")
        _refuse_another_request(first, request_digest)
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
        log.warning("%d unreadable record(s) in the ledger of %s skipped", ledger.unreadable, deliberation_id)
    return ledger


async def check_request(buckets: Buckets, deliberation_id: str, request_digest: str) -> None:
    """Raise ConfigurationError if the id was first used for another request; nothing if it
    was never used. Reads the ledger's first record only: for a deliberation whose result
    stands, where the calls are not needed."""
    try:
        bucket = await buckets.open(CALLS_BUCKET)
        try:
            entry = await bucket.get(deliberation_id)
        except KeyNotFoundError:
            return
        first = LedgerHeader.model_validate_json(entry.value or b"")
    except (NatsError, TimeoutError, ValidationError) as exc:
        raise EventBusError(
            f"reading the call ledger of {deliberation_id} in {CALLS_BUCKET} failed: "
            f"{type(exc).__name__} {exc}"
        ) from None
    _refuse_another_request(first, request_digest)


def _refuse_another_request(first: LedgerHeader, request_digest: str) -> None:
    if first.request_digest != request_digest:
        raise ConfigurationError(
            f"deliberation {first.deliberation_id} was started with a different request; "
            "reuse a deliberation id only to resume it, or choose a new one"
        )


async def record_calls(buckets: Buckets, deliberation_id: str, calls: Sequence[StageCall]) -> None:
    """Record finished calls in the ledger, all at once, before anything is published
    about them."""

    def failed(what: str, exc: Exception) -> EventBusError:
        return EventBusError(
            f"recording {what} of {deliberation_id} in {CALLS_BUCKET} failed: {type(exc).__name__} {exc}"
        )

    try:
        bucket = await buckets.open(CALLS_BUCKET)
    except (NatsError, TimeoutError) as exc:
        raise failed(", ".join(call.call_id for call in calls), exc) from None

    async def record(call: StageCall) -> None:
        key, value = f"{deliberation_id}.{call.call_id}", call.model_dump_json().encode()
        try:
            # A put lost while nats-server restarts failed the flow run, and a finished call
            # was then asked again; putting the same value twice is harmless.
            await send_until_acked(lambda: bucket.put(key, value), f"recording {key}")
        except (NatsError, TimeoutError) as exc:
            raise failed(call.call_id, exc) from None

    await asyncio.gather(*(record(call) for call in calls))

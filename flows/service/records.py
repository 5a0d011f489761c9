"""A deliberation's status record in the intake, kept by the front and the runners alike:
created when a request is taken in, the reply read from it, and a deliberation concluded
without a flow run (cancelled before it started, or failed on every try)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelling, Crashed

from agents.adapters.nats import JetStreamBus
from agents.adapters.nats.intake import Intake
from agents.conclusion import conclude_stopped
from agents.context import fit_context
from agents.events import DeliberationProgressEvent, agent_event, deliberation_event
from agents.models import DeliberationRequest, DeliberationResult, DeliberationStatus
from agents.service import DeliberationState, StatusRecord, StatusReply
from flows.runtime import metrics

CANCELLED_BY_SERVICE = "cancelled through the deliberation service"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Accepted:
    """A status record as it stands once a request is taken in, and whether this call
    created it (then announcing it is the caller's: `announce_accepted`)."""

    record: StatusRecord
    revision: int
    created: bool


async def record_accepted(intake: Intake, request: DeliberationRequest) -> Accepted:
    """The status record of a request taken in, created unless it exists: by the submit that
    stored the request, or by the runner that took it first."""
    deliberation_id = request.deliberation_id or ""
    now = utc_now()
    record = StatusRecord(
        deliberation_id=deliberation_id,
        status=DeliberationState.ACCEPTED,
        request_digest=request.digest(),
        request=request,
        accepted_at=now,
        updated_at=now,
    )
    revision = await intake.create_status(record)
    if revision is not None:
        return Accepted(record, revision, created=True)
    known = await intake.status(deliberation_id)
    assert known is not None  # created by whoever was first
    return Accepted(*known, created=False)


async def announce_accepted(bus: JetStreamBus, request: DeliberationRequest) -> None:
    deliberation_id = request.deliberation_id or ""
    await bus.publish(
        DeliberationProgressEvent(
            deliberation_id=deliberation_id, task_id=request.task_id or deliberation_id, status="accepted"
        )
    )


def reply_of(record: StatusRecord, result: DeliberationResult | None = None) -> StatusReply:
    return StatusReply(
        deliberation_id=record.deliberation_id,
        status=record.status,
        flow_run_id=record.flow_run_id,
        reason=record.reason,
        result=result,
    )


async def cancel_flow_run(flow_run_id: str, reason: str) -> None:
    async with get_client() as client:
        await client.set_flow_run_state(UUID(flow_run_id), Cancelling(message=reason), force=True)


UNFINISHED = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]


async def crash_abandoned_run(flow_run_id: str, reason: str) -> None:
    """A flow run whose runner is gone, and its unfinished task runs, marked Crashed: left
    alone they stay Running in the UI for ever, since no one is left to end them. A run
    that ended meanwhile stays as it ended (Prefect refuses the change)."""
    async with get_client() as client:
        run_id = UUID(flow_run_id)
        unfinished = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
            task_run_filter=TaskRunFilter(
                state=TaskRunFilterState(type=TaskRunFilterStateType(any_=UNFINISHED))
            ),
        )
        for task_run in unfinished:
            await client.set_task_run_state(task_run.id, Crashed(message=reason))
        await client.set_flow_run_state(run_id, Crashed(message=reason))


async def conclude_without_run(
    bus: JetStreamBus, intake: Intake, record: StatusRecord, status: DeliberationState, reason: str
) -> StatusRecord | None:
    """Conclude a deliberation that is not running (cancelled before it started, or failed
    on every try): its result (the proposals its runs made stand), stored, then announced.
    None if its status changed meanwhile (the caller reads it again)."""
    known = await intake.status(record.deliberation_id)
    if known is None or known[0] != record:
        return None
    _, revision = known
    request = record.request
    ledger = await bus.open_ledger(record.deliberation_id, record.request_digest, record.accepted_at)
    result = conclude_stopped(
        request,
        record.deliberation_id,
        DeliberationStatus(status.value),
        reason,
        ledger.calls,
        ledger.started_at,
        utc_now(),
        context_cut=fit_context(request).gaps(),
    )
    concluded = record.model_copy(update={"status": status, "reason": reason, "updated_at": utc_now()})
    if not await intake.update_status(concluded, revision):
        return None
    await bus.save_result(result)
    # Every agent's outcome, as a flow run publishes them: those with no proposal have
    # theirs here only; a proposal's own event, published already, is de-duplicated.
    await bus.publish_all([agent_event(result.deliberation_id, result.task_id, o) for o in result.outcomes])
    await bus.publish(deliberation_event(result))
    metrics.CONCLUDED.labels(status.value).inc()
    return concluded

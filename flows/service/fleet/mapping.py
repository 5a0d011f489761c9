"""The fleet orchestrator's messages and ours, both ways (schemas/fleet/orchestrator/v1).

Pure: no I/O. The server (flows/service/fleet/server.py) answers each RPC with these.

- A `task_id` is the fleet's idempotency key: the same one with the same request is the
  same deliberation. It is the deliberation's id when it is one (letters, digits, `_`,
  `-`, at most 64), else a digest of it (`fleet-<sha256>`), so every fleet id has one.
- The council: `role` set, `num_agents` agents of that role (default 3); unset, the first
  `num_agents` of DEV, QA, ARCHITECT, DEVOPS, DATA, one each. `rounds` 0 is the default
  (1); `max_iterations`, when set, caps the rounds; `timeout_seconds` is the deadline.
- Statuses: accepted -> PENDING, running -> IN_PROGRESS, completed -> COMPLETED, failed ->
  FAILED (TIMEOUT when agents were cut at the deadline), cancelled -> FAILED, its reason
  the error message.
- Checks: every check of ours in `additional_checks`; `lint` from `code_parses` (the code
  blocks parse), `dryrun` from `tests_pass` when the code was run; `policy` is never set,
  since no check of ours means that.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime

from pydantic import ValidationError

from agents.errors import describe_validation_error
from agents.events import (
    AgentResponseEvent,
    DeliberationEvent,
    DeliberationProgressEvent,
    Event,
    RankedEvent,
    ReviewEvent,
)
from agents.models import (
    ID_PATTERN,
    AgentStatus,
    CheckResult,
    Constraints,
    DeliberationRequest,
    DeliberationResult,
    Role,
    Stage,
)
from agents.service import SERVICE_NAME, SERVICE_VERSION, DeliberationState, StatusRecord
from flows.service.fleet import orchestrator_pb2 as pb

DEFAULT_AGENTS = 3
DEFAULT_ROUNDS = 1
ORCHESTRATOR_VERSION = f"{SERVICE_NAME} {SERVICE_VERSION}"
_ID = re.compile(ID_PATTERN)


class InvalidRequest(ValueError):
    """A request the fleet API answers INVALID_ARGUMENT, with this one line."""


def deliberation_id_of(task_id: str) -> str:
    if _ID.match(task_id):
        return task_id
    return "fleet-" + hashlib.sha256(task_id.encode()).hexdigest()[:40]


def request_of(message: pb.DeliberateRequest) -> tuple[str, DeliberationRequest]:
    """The fleet's task id (a new one if it gave none) and our request for it."""
    task_id = message.task_id or uuid.uuid4().hex
    agents = message.num_agents or DEFAULT_AGENTS
    if message.num_agents < 0 or message.rounds < 0 or message.constraints.max_iterations < 0:
        raise InvalidRequest("num_agents, rounds and max_iterations must not be negative")
    if message.role:
        try:
            role = Role(message.role.upper())
        except ValueError:
            raise InvalidRequest(
                f"unknown role {message.role!r}; one of {', '.join(r.value for r in Role)}"
            ) from None
        roles, per_role = [role], agents
    elif agents > len(Role):
        raise InvalidRequest(f"num_agents {agents}: without a role, at most {len(Role)} (one per role)")
    else:
        roles, per_role = list(Role)[:agents], 1
    rounds = message.rounds or DEFAULT_ROUNDS
    if message.constraints.max_iterations:
        rounds = min(rounds, message.constraints.max_iterations)
    constraints = message.constraints
    deliberation_id = deliberation_id_of(task_id)
    fields: dict[str, object] = {
        "task": message.task_description,
        "task_id": deliberation_id,
        "deliberation_id": deliberation_id,
        "roles": roles,
        "agents_per_role": per_role,
        "rounds": rounds,
        "constraints": Constraints(
            rubric=constraints.rubric,
            requirements=list(constraints.requirements),
            metadata=dict(constraints.metadata),
        ),
    }
    if constraints.timeout_seconds:
        fields["deadline_seconds"] = constraints.timeout_seconds
    try:
        return task_id, DeliberationRequest.model_validate(fields)
    except ValidationError as exc:
        raise InvalidRequest(describe_validation_error(exc)) from None


def status_of(state: DeliberationState, result: DeliberationResult | None) -> pb.DeliberationStatus:
    if state is DeliberationState.ACCEPTED:
        return pb.DELIBERATION_STATUS_PENDING
    if state is DeliberationState.RUNNING:
        return pb.DELIBERATION_STATUS_IN_PROGRESS
    if state is DeliberationState.COMPLETED:
        return pb.DELIBERATION_STATUS_COMPLETED
    cut = result is not None and any(o.status is AgentStatus.TIMED_OUT for o in result.outcomes)
    if state is DeliberationState.FAILED and cut:
        return pb.DELIBERATION_STATUS_TIMEOUT
    return pb.DELIBERATION_STATUS_FAILED


def check_suite_of(checks: list[CheckResult]) -> pb.CheckSuite:
    suite = pb.CheckSuite(
        additional_checks=[
            pb.CheckResult(
                check_type=c.name,
                passed=c.passed,
                score=c.score,
                message=c.detail,
                details={"applicable": str(c.applicable).lower(), "required": str(c.required).lower()},
            )
            for c in checks
        ],
        all_passed=all(c.passed for c in checks if c.applicable),
    )
    by_name = {c.name: c for c in checks if c.applicable}
    if (parses := by_name.get("code_parses")) is not None:
        errors = [] if parses.passed else [parses.detail]
        suite.lint.CopyFrom(pb.LintResult(passed=parses.passed, error_count=len(errors), errors=errors))
    if (ran := by_name.get("tests_pass")) is not None:
        suite.dryrun.CopyFrom(
            pb.DryRunResult(
                passed=ran.passed, output=ran.detail, exit_code=0 if ran.passed else 1, message=ran.detail
            )
        )
    return suite


def results_of(result: DeliberationResult) -> list[pb.DeliberationResult]:
    """Each proposal, best first where the council ranked them: the original, its revisions,
    its checks, score and rank (0 where it was not ranked)."""
    started_ms = int(result.started_at.timestamp() * 1000)
    revisions: dict[str, list[str]] = {}
    for call in result.reviews:
        if call.stage is Stage.REVISION and call.content is not None:
            revisions.setdefault(call.agent_id, []).append(call.content)
    proposals = {o.agent_id: o for o in result.outcomes if o.proposal is not None}
    scored = {s.agent_id: s for s in result.scores}
    order = [s.agent_id for s in result.scores] + [a for a in proposals if a not in scored]
    results = []
    for agent_id in order:
        outcome = proposals.get(agent_id)
        if outcome is None or outcome.proposal is None:
            continue
        score = scored.get(agent_id)
        results.append(
            pb.DeliberationResult(
                proposal=pb.Proposal(
                    author_id=agent_id,
                    author_role=outcome.role.value,
                    content=outcome.proposal.content,
                    # When its call ended: the proposals start with the deliberation.
                    created_at_ms=started_ms + outcome.duration_ms,
                    revisions=revisions.get(agent_id, []),
                ),
                checks=check_suite_of(score.checks) if score is not None else None,
                score=score.score if score is not None else 0.0,
                rank=score.rank if score is not None else 0,
            )
        )
    return results


def metadata_of(record: StatusRecord) -> pb.OrchestratorMetadata:
    return pb.OrchestratorMetadata(
        orchestrator_version=ORCHESTRATOR_VERSION,
        timestamp_ms=int(datetime.now(UTC).timestamp() * 1000),
        execution_id=record.flow_run_id or record.deliberation_id,
        tags={**record.request.constraints.metadata, "deliberation_id": record.deliberation_id},
    )


def response_of(
    task_id: str, record: StatusRecord, result: DeliberationResult | None
) -> pb.DeliberateResponse:
    return pb.DeliberateResponse(
        task_id=task_id,
        results=results_of(result) if result is not None else [],
        winner_id=result.winner.agent_id if result is not None and result.winner else "",
        duration_ms=result.duration_ms if result is not None else 0,
        metadata=metadata_of(record),
    )


def result_response_of(
    task_id: str, record: StatusRecord, result: DeliberationResult | None
) -> pb.GetDeliberationResultResponse:
    failed = record.status in (DeliberationState.FAILED, DeliberationState.CANCELLED)
    error = record.reason or (result.summary if result is not None else "") if failed else ""
    return pb.GetDeliberationResultResponse(
        task_id=task_id,
        status=status_of(record.status, result),
        results=results_of(result) if result is not None else [],
        winner_id=result.winner.agent_id if result is not None and result.winner else "",
        duration_ms=result.duration_ms if result is not None else 0,
        error_message=error,
        metadata=metadata_of(record),
    )


def update_of(event: Event, agents: int, done: int) -> pb.DeliberationUpdate | None:
    """What one event of the deliberation tells a StreamDeliberation client (`done` of
    `agents` proposals finished, this one included), or None if nothing."""
    generating = 10 + int(50 * done / max(1, agents))
    if isinstance(event, DeliberationProgressEvent):
        if event.status == "started":
            return pb.DeliberationUpdate(status="generating", progress_percent=5, current_step="started")
        return None
    if isinstance(event, AgentResponseEvent):
        if event.proposal is None:
            why = event.error.message if event.error is not None else event.status.value
            step = f"{event.agent_id} has no proposal: {why}"
            return pb.DeliberationUpdate(
                status="generating",
                progress_percent=generating,
                current_step=step,
                current_agent=event.agent_id,
            )
        partial = pb.DeliberationResult(
            proposal=pb.Proposal(
                author_id=event.agent_id,
                author_role=event.role.value,
                content=event.proposal.content,
                created_at_ms=int(event.timestamp.timestamp() * 1000),
            )
        )
        return pb.DeliberationUpdate(
            status="generating",
            progress_percent=generating,
            current_step=f"proposal {done} of {agents}",
            current_agent=event.agent_id,
            partial_result=partial,
        )
    if isinstance(event, ReviewEvent):
        return pb.DeliberationUpdate(
            status="reviewing",
            progress_percent=70,
            current_step=f"round {event.round}: {event.critic_id} on {event.author_id}",
            current_agent=event.critic_id,
        )
    if isinstance(event, RankedEvent):
        return pb.DeliberationUpdate(
            status="scoring", progress_percent=90, current_step=f"ranked: winner {event.winner or 'none'}"
        )
    if isinstance(event, DeliberationEvent):
        return pb.DeliberationUpdate(status="complete", progress_percent=100, current_step=event.summary)
    return None

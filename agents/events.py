"""Event payloads, their subjects and de-duplication ids. Pure: no I/O here.

Every event carries `schema_version`; consumers validate with `parse_event`.
Subjects:
  agent.response.completed / agent.response.failed   one per agent per deliberation
  deliberation.review.completed                      one per critique received
  deliberation.ranked                                one per ranked deliberation
  deliberation.completed / deliberation.failed       one per deliberation, last
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from agents.models import (
    AgentOutcome,
    AgentStatus,
    Ballot,
    DeliberationResult,
    DeliberationStatus,
    ProposalScore,
    StageCall,
    Winner,
)

SCHEMA_VERSION: Literal[1] = 1

AGENT_RESPONSE_COMPLETED = "agent.response.completed"
AGENT_RESPONSE_FAILED = "agent.response.failed"
DELIBERATION_COMPLETED = "deliberation.completed"
DELIBERATION_FAILED = "deliberation.failed"
DELIBERATION_CANCELLED = "deliberation.cancelled"
DELIBERATION_REVIEW_COMPLETED = "deliberation.review.completed"
DELIBERATION_RANKED = "deliberation.ranked"
DELIBERATION_ACCEPTED = "deliberation.accepted"
DELIBERATION_STARTED = "deliberation.started"

# Completed, failed and cancelled share a stream, so one de-duplication id covers them:
# an agent (or a deliberation) can never be reported twice, whatever its outcome. The
# deliberations' stream names its subjects one by one: `deliberation.>` would also store
# the requests to the service's endpoints (deliberation.submit, ...) and answer them with
# JetStream's ack before the service could.
STREAM_SUBJECTS: dict[str, list[str]] = {
    "AGENT_RESPONSES": ["agent.response.>"],
    "DELIBERATIONS": [
        DELIBERATION_ACCEPTED,
        DELIBERATION_STARTED,
        DELIBERATION_REVIEW_COMPLETED,
        DELIBERATION_RANKED,
        DELIBERATION_COMPLETED,
        DELIBERATION_FAILED,
        DELIBERATION_CANCELLED,
    ],
}


def _now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    schema_version: Literal[1] = SCHEMA_VERSION
    deliberation_id: str
    task_id: str
    timestamp: datetime = Field(default_factory=_now)

    @property
    def subject(self) -> str:
        raise NotImplementedError

    @property
    def msg_id(self) -> str:
        """The `Nats-Msg-Id` JetStream de-duplicates on."""
        raise NotImplementedError


class AgentResponseEvent(Event, AgentOutcome):
    @property
    def subject(self) -> str:
        if self.status is AgentStatus.COMPLETED:
            return AGENT_RESPONSE_COMPLETED
        return AGENT_RESPONSE_FAILED

    @property
    def msg_id(self) -> str:
        return f"{self.deliberation_id}.{self.agent_id}"


class ReviewEvent(Event):
    """A critique of one proposal, by an agent of another role."""

    round: int
    critic_id: str
    author_id: str
    critique: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int

    @property
    def subject(self) -> str:
        return DELIBERATION_REVIEW_COMPLETED

    @property
    def msg_id(self) -> str:
        return f"{self.deliberation_id}.review.r{self.round}.{self.critic_id}.{self.author_id}"


class RankedEvent(Event):
    """The peer ranking and checks, aggregated: every proposal's score, best first."""

    scores: list[ProposalScore]
    ballots_counted: int
    abstentions: list[str] = Field(description="Reviewers whose ballot did not count, with why.")
    winner: str | None
    tie_break: str | None

    @property
    def subject(self) -> str:
        return DELIBERATION_RANKED

    @property
    def msg_id(self) -> str:
        return f"{self.deliberation_id}.ranked"


class AgentSummary(BaseModel):
    agent_id: str
    status: AgentStatus


class DeliberationEvent(Event):
    status: DeliberationStatus
    quorum: int
    completed: int
    missing: list[str]
    agents: list[AgentSummary]
    prompt_tokens: int
    completion_tokens: int
    duration_ms: int
    summary: str
    winner: str | None = None
    winner_score: float | None = None
    incomplete: list[str] = Field(default_factory=list)

    @property
    def subject(self) -> str:
        return {
            DeliberationStatus.COMPLETED: DELIBERATION_COMPLETED,
            DeliberationStatus.FAILED: DELIBERATION_FAILED,
            DeliberationStatus.CANCELLED: DELIBERATION_CANCELLED,
        }[self.status]

    @property
    def msg_id(self) -> str:
        return f"{self.deliberation_id}.deliberation"


class DeliberationProgressEvent(Event):
    """A deliberation taken in by the service (accepted), or begun by a flow run (started)."""

    status: Literal["accepted", "started"]
    flow_run_id: str | None = Field(default=None, description="The flow run of `deliberate`, once started.")
    attempt: int = Field(default=1, ge=1, description="Which delivery of the request started it.")

    @property
    def subject(self) -> str:
        return DELIBERATION_ACCEPTED if self.status == "accepted" else DELIBERATION_STARTED

    @property
    def msg_id(self) -> str:
        suffix = "accepted" if self.status == "accepted" else f"started.{self.attempt}"
        return f"{self.deliberation_id}.{suffix}"


def agent_event(deliberation_id: str, task_id: str, outcome: AgentOutcome) -> AgentResponseEvent:
    return AgentResponseEvent(deliberation_id=deliberation_id, task_id=task_id, **outcome.model_dump())


def deliberation_event(result: DeliberationResult) -> DeliberationEvent:
    return DeliberationEvent(
        deliberation_id=result.deliberation_id,
        task_id=result.task_id,
        status=result.status,
        quorum=result.quorum,
        completed=result.completed,
        missing=result.missing,
        agents=[AgentSummary(agent_id=o.agent_id, status=o.status) for o in result.outcomes],
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        duration_ms=result.duration_ms,
        summary=result.summary,
        winner=result.winner.agent_id if result.winner else None,
        winner_score=result.winner.score if result.winner else None,
        incomplete=result.incomplete,
    )


def review_event(deliberation_id: str, task_id: str, critique: StageCall) -> ReviewEvent:
    if critique.subject_id is None or critique.content is None:
        raise ValueError(f"{critique.call_id} is not a finished critique")
    return ReviewEvent(
        deliberation_id=deliberation_id,
        task_id=task_id,
        round=critique.round,
        critic_id=critique.agent_id,
        author_id=critique.subject_id,
        critique=critique.content,
        prompt_tokens=critique.prompt_tokens,
        completion_tokens=critique.completion_tokens,
        latency_ms=critique.latency_ms,
    )


def ranked_event(
    deliberation_id: str,
    task_id: str,
    scores: list[ProposalScore],
    ballots: list[Ballot],
    winner: Winner | None,
) -> RankedEvent:
    return RankedEvent(
        deliberation_id=deliberation_id,
        task_id=task_id,
        scores=scores,
        ballots_counted=sum(1 for b in ballots if not b.abstained),
        abstentions=[f"{b.reviewer_id}: {b.abstained}" for b in ballots if b.abstained],
        winner=winner.agent_id if winner else None,
        tie_break=winner.tie_break if winner else None,
    )


_EVENT_TYPES: dict[str, type[Event]] = {
    AGENT_RESPONSE_COMPLETED: AgentResponseEvent,
    AGENT_RESPONSE_FAILED: AgentResponseEvent,
    DELIBERATION_COMPLETED: DeliberationEvent,
    DELIBERATION_FAILED: DeliberationEvent,
    DELIBERATION_CANCELLED: DeliberationEvent,
    DELIBERATION_ACCEPTED: DeliberationProgressEvent,
    DELIBERATION_STARTED: DeliberationProgressEvent,
    DELIBERATION_REVIEW_COMPLETED: ReviewEvent,
    DELIBERATION_RANKED: RankedEvent,
}


def parse_event(subject: str, data: bytes) -> Event:
    """Validate a consumed message; raises ValueError for unknown subjects or bad payloads."""
    event_type = _EVENT_TYPES.get(subject)
    if event_type is None:
        raise ValueError(f"no event type for subject {subject!r}")
    event = event_type.model_validate_json(data)
    if event.subject != subject:
        raise ValueError(f"payload says {event.subject!r} but arrived on {subject!r}")
    return event

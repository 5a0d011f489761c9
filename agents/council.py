"""Who deliberates (planning the council) and what came of it (concluding)."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from agents.checks import incomplete_answer
from agents.config import DEFAULT_ENDPOINT
from agents.context import fit_context
from agents.models import (
    CHAIR_ID,
    AgentOutcome,
    AgentSpec,
    AgentStatus,
    ChatCompletion,
    DeliberationRequest,
    DeliberationResult,
    DeliberationStatus,
    ErrorInfo,
    ModelCall,
    Proposal,
    Stage,
    StageCall,
    Usage,
    UsageReport,
    Verdict,
)
from agents.prompts import proposal_messages

# What a call's record keeps of the model's answer, and a proposal carries on.
COMPLETION_FIELDS = {"content", "finish_reason", "prompt_tokens", "completion_tokens", "latency_ms"}

DIVERSITY_TEMPERATURE_FACTOR = 1.3
MAX_TEMPERATURE = 2.0


def agent_id_for(role: str, index: int) -> str:
    return f"agent-{role.lower()}-{index:03d}"


def call_id_for(stage: Stage, agent_id: str, round_: int = 0, subject_id: str | None = None) -> str:
    """A call's id within its deliberation, which keys it in the call ledger: the bare agent
    id for a proposal, else who speaks, the stage, the round and whom it is about, as in
    `agent-qa-001.critique.r1.agent-dev-001`, `agent-dev-001.revision.r1`,
    `agent-qa-001.ranking`, `chair.synthesis`."""
    if stage is Stage.PROPOSAL:
        return agent_id
    parts = [agent_id, str(stage)]
    if round_:
        parts.append(f"r{round_}")
    if subject_id is not None and subject_id != agent_id:
        parts.append(subject_id)
    return ".".join(parts)


def run_name(call: ModelCall) -> str:
    """The call's task run name in the Prefect UI and the live view, one scheme for every
    stage: `<agent id>.<stage>[.r<round>][.<subject>]` (a proposal's call id is the bare
    agent id, so its name adds `.proposal`)."""
    return f"{call.agent_id}.{call.stage}" if call.stage is Stage.PROPOSAL else call.call_id


def plan_call(
    request: DeliberationRequest,
    stage: Stage,
    agent_id: str,
    messages: list[dict[str, str]],
    temperature: float,
    round_: int = 0,
    subject_id: str | None = None,
    answer_schema: dict[str, Any] | None = None,
) -> ModelCall:
    """One model call of the deliberation, whatever its stage."""
    return ModelCall(
        call_id=call_id_for(stage, agent_id, round_, subject_id),
        stage=stage,
        agent_id=agent_id,
        messages=messages,
        temperature=temperature,
        max_tokens=request.max_tokens,
        round=round_,
        subject_id=subject_id,
        answer_schema=answer_schema,
    )


def request_digest(request: DeliberationRequest) -> str:
    """What a deliberation asks, as a digest: a rerun under the same id must ask the same.
    The deadline may change (it still counts from the first start), the id is the key."""
    asked = request.model_dump_json(exclude={"deliberation_id", "deadline_seconds"})
    return hashlib.sha256(asked.encode()).hexdigest()


def proposal_call(request: DeliberationRequest, agent: AgentSpec) -> ModelCall:
    """An agent's proposal."""
    return plan_call(
        request, Stage.PROPOSAL, agent.agent_id, proposal_messages(request, agent), agent.temperature
    )


def finished_call(
    call: ModelCall,
    status: AgentStatus,
    attempts: int,
    reply: ChatCompletion | None = None,
    error: ErrorInfo | None = None,
    duration_ms: int = 0,
) -> StageCall:
    """What came of a call: its reply, or the error that ended it."""
    answered = {}
    if reply is not None:
        answered = reply.model_dump(include=COMPLETION_FIELDS | {"model"})
        answered.update(
            prompt_tokens=reply.prompt_tokens or 0, completion_tokens=reply.completion_tokens or 0
        )
    return StageCall(
        call_id=call.call_id,
        stage=call.stage,
        agent_id=call.agent_id,
        round=call.round,
        subject_id=call.subject_id,
        status=status,
        attempts=attempts,
        error=error,
        duration_ms=duration_ms,
        **answered,
    )


def agent_outcome(agent: AgentSpec, call: StageCall) -> AgentOutcome:
    """An agent's outcome from its proposal call."""
    proposal = None
    if call.status is AgentStatus.COMPLETED and call.content is not None:
        proposal = Proposal(
            **call.model_dump(include=COMPLETION_FIELDS),
            model=call.model or "",
            author_id=agent.agent_id,
            author_role=agent.role,
            temperature=agent.temperature,
        )
    return AgentOutcome(
        agent_id=agent.agent_id,
        role=agent.role,
        status=call.status,
        attempts=call.attempts,
        duration_ms=call.duration_ms,
        proposal=proposal,
        error=call.error,
    )


def plan_critiques(authors: Sequence[AgentSpec], critics: int) -> list[tuple[AgentSpec, AgentSpec]]:
    """(critic, author) pairs: each author gets up to `critics` critics from the other
    authors, of other roles first, and among those the ones with the fewest critiques to
    write so far, then the nearest in a rotation starting after the author: the critiquing
    is spread evenly over the council (with 2 agents per role and 1 critic, rotation
    alone gave half the agents two critiques and the other half none)."""
    pairs = []
    load: Counter[str] = Counter()
    for position, author in enumerate(authors):
        rotation = [*authors[position + 1 :], *authors[:position]]
        order = sorted(
            range(len(rotation)),
            key=lambda i: (rotation[i].role == author.role, load[rotation[i].agent_id], i),
        )
        for critic in (rotation[i] for i in order[:critics]):
            load[critic.agent_id] += 1
            pairs.append((critic, author))
    return pairs


def largest_stage_calls(request: DeliberationRequest, council_size: int) -> int:
    """The most model calls one stage of this deliberation has in flight at once: the
    critiques of a review round (each proposal by up to `critics` others), else one call
    per agent."""
    if request.rounds and council_size > 1:
        return council_size * min(request.critics, council_size - 1)
    return council_size


def plan_council(request: DeliberationRequest) -> list[AgentSpec]:
    """One spec per agent, role by role. The first agent of a role is plain; the others
    run hotter and are told to take a distinctly different approach."""
    council = []
    for role in request.roles:
        for index in range(1, request.agents_per_role + 1):
            diverge = index > 1
            temperature = request.temperature
            if diverge:
                temperature = min(temperature * DIVERSITY_TEMPERATURE_FACTOR, MAX_TEMPERATURE)
            council.append(
                AgentSpec(
                    agent_id=agent_id_for(role, index),
                    role=role,
                    index=index,
                    temperature=round(temperature, 4),
                    diverge=diverge,
                )
            )
    return council


def assign_endpoints(request: DeliberationRequest, council: Sequence[AgentSpec]) -> dict[str, str]:
    """Who speaks through which endpoint, by agent id (the chair included): the agent's own
    assignment, else its role's, else the default endpoint."""
    assigned = {
        agent.agent_id: request.endpoints.get(agent.agent_id)
        or request.endpoints.get(str(agent.role))
        or DEFAULT_ENDPOINT
        for agent in council
    }
    assigned[CHAIR_ID] = request.endpoints.get(CHAIR_ID, DEFAULT_ENDPOINT)
    return assigned


def tally_usage(outcomes: Sequence[AgentOutcome], calls: Sequence[StageCall]) -> UsageReport:
    """Tokens and call latency per agent, per stage and in total."""
    report = UsageReport()

    def add(agent_id: str, stage: Stage, prompt: int | None, completion: int | None, latency: int) -> None:
        report.total = report.total.plus(prompt, completion, latency)
        for totals, key in ((report.by_agent, agent_id), (report.by_stage, str(stage))):
            totals[key] = totals.get(key, Usage()).plus(prompt, completion, latency)

    for outcome in outcomes:
        if outcome.proposal is not None:
            p = outcome.proposal
            add(outcome.agent_id, Stage.PROPOSAL, p.prompt_tokens, p.completion_tokens, p.latency_ms)
    for call in calls:
        if call.ok:
            add(call.agent_id, call.stage, call.prompt_tokens, call.completion_tokens, call.latency_ms)
    return report


def why_no_answer(
    status: AgentStatus,
    error: ErrorInfo | None,
    content: str | None = None,
    finish_reason: str | None = None,
    brief: bool = False,
) -> str:
    """Why a call gave no usable answer: the error that ended it (`brief`: its type only,
    for a summary), else what is wrong with the answer."""
    if error is None:
        return incomplete_answer(content or "", finish_reason) or str(status)
    if not brief:
        return f"{status} ({error.type}: {error.message})"
    if error.type == "DeadlineExceeded":
        return "timed out at the deadline"
    verb = "timed out" if status is AgentStatus.TIMED_OUT else "failed"
    return f"{verb}: {error.type}"


def conclude(
    request: DeliberationRequest,
    deliberation_id: str,
    outcomes: Sequence[AgentOutcome],
    started_at: datetime,
    finished_at: datetime,
    verdict: Verdict | None = None,
    stage_ms: dict[str, int] | None = None,
) -> DeliberationResult:
    """The deliberation succeeds when at least `quorum` agents produced a proposal; the
    review, ranking and synthesis that followed (the verdict, if they ran) are recorded as
    they went, gaps included; the context the prompts could not hold comes first among them."""
    verdict = verdict or Verdict()
    winner, synthesis = verdict.winner, verdict.synthesis
    completed = [o for o in outcomes if o.status is AgentStatus.COMPLETED]
    missing = [o for o in outcomes if o.status is not AgentStatus.COMPLETED]
    quorum = request.required_proposals
    met = len(completed) >= quorum
    summary = f"{len(completed)} of {len(outcomes)} proposals (quorum {quorum}) " + (
        "met" if met else "not met"
    )
    if missing:
        summary += "; missing: " + ", ".join(
            f"{o.agent_id} ({why_no_answer(o.status, o.error, brief=True)})" for o in missing
        )
    if winner is not None:
        summary += f"; winner {winner.agent_id} (score {winner.score:.2f})"
    calls = [*verdict.reviews, *verdict.rankings, *([synthesis] if synthesis else [])]
    usage = tally_usage(outcomes, calls)
    usage.stage_ms = dict(stage_ms or {})
    return DeliberationResult(
        deliberation_id=deliberation_id,
        task_id=request.task_id or deliberation_id,
        status=DeliberationStatus.COMPLETED if met else DeliberationStatus.FAILED,
        quorum=quorum,
        completed=len(completed),
        missing=[o.agent_id for o in missing],
        outcomes=list(outcomes),
        reviews=verdict.reviews,
        rankings=verdict.rankings,
        ballots=verdict.ballots,
        scores=verdict.scores,
        winner=winner,
        synthesis=synthesis,
        incomplete=[*fit_context(request).gaps(), *verdict.incomplete],
        usage=usage,
        prompt_tokens=usage.total.prompt_tokens,
        completion_tokens=usage.total.completion_tokens,
        started_at=started_at,
        duration_ms=int((finished_at - started_at).total_seconds() * 1000),
        summary=summary,
    )


def conclude_stopped(
    request: DeliberationRequest,
    deliberation_id: str,
    status: DeliberationStatus,
    reason: str,
    calls: Mapping[str, StageCall],
    started_at: datetime,
    finished_at: datetime,
    stage_ms: dict[str, int] | None = None,
) -> DeliberationResult:
    """A deliberation stopped before its stages concluded it: cancelled on request, or
    failed for good (say, it crashed on every try). The proposals made before stand
    (`calls`, the ledger's records); every other agent has none, for `reason`. Nothing is
    ranked."""
    error = ErrorInfo(type=status.title(), message=reason, retryable=False)

    def proposal_of(agent: AgentSpec) -> StageCall:
        unmade = StageCall(
            call_id=call_id_for(Stage.PROPOSAL, agent.agent_id),
            stage=Stage.PROPOSAL,
            agent_id=agent.agent_id,
            status=AgentStatus.FAILED,
            error=error,
        )
        return calls.get(unmade.call_id, unmade)

    outcomes = [agent_outcome(agent, proposal_of(agent)) for agent in plan_council(request)]
    result = conclude(request, deliberation_id, outcomes, started_at, finished_at, None, stage_ms)
    return result.model_copy(
        update={
            "status": status,
            "summary": f"{status} ({reason}); {result.summary}",
            "incomplete": [*result.incomplete, f"{status}: {reason}"],
        }
    )

"""What came of a deliberation: each agent's outcome from its proposal call, why a call gave
no usable answer, and the result a deliberation concludes with, whether its stages ran to
the end or it was stopped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from agents.calls import COMPLETION_FIELDS, call_id_for
from agents.checks import incomplete_answer
from agents.models import (
    AgentOutcome,
    AgentSpec,
    AgentStatus,
    DeliberationRequest,
    DeliberationResult,
    DeliberationStatus,
    ErrorInfo,
    Proposal,
    Stage,
    StageCall,
    Usage,
    UsageReport,
    Verdict,
)
from agents.planning import plan_council
from agents.proposal_form import as_text


def agent_outcome(agent: AgentSpec, call: StageCall) -> AgentOutcome:
    """An agent's outcome from its proposal call."""
    proposal = None
    if call.status is AgentStatus.COMPLETED and call.content is not None:
        proposal = Proposal(
            **as_text(call).model_dump(include=COMPLETION_FIELDS),
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
    context_cut: Sequence[str] = (),
) -> DeliberationResult:
    """The deliberation succeeds when at least `quorum` agents produced a proposal; the
    review, ranking and synthesis that followed (the verdict, if they ran) are recorded as
    they went, gaps included; what the prompts could not hold of the context (`context_cut`,
    agents.context.FittedContext.gaps) comes first among them."""
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
        incomplete=[*context_cut, *verdict.incomplete],
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
    context_cut: Sequence[str] = (),
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
    result = conclude(
        request, deliberation_id, outcomes, started_at, finished_at, None, stage_ms, context_cut
    )
    return result.model_copy(
        update={
            "status": status,
            "summary": f"{status} ({reason}); {result.summary}",
            "incomplete": [*result.incomplete, f"{status}: {reason}"],
        }
    )

"""Who deliberates (planning the council) and what came of it (concluding)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from agents.models import (
    AgentOutcome,
    AgentSpec,
    AgentStatus,
    DeliberationRequest,
    DeliberationResult,
    DeliberationStatus,
)

DIVERSITY_TEMPERATURE_FACTOR = 1.3
MAX_TEMPERATURE = 2.0


def agent_id_for(role: str, index: int) -> str:
    return f"agent-{role.lower()}-{index:03d}"


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


def conclude(
    request: DeliberationRequest,
    deliberation_id: str,
    outcomes: Sequence[AgentOutcome],
    started_at: datetime,
    finished_at: datetime,
) -> DeliberationResult:
    """The deliberation succeeds when at least `quorum` agents produced a proposal."""
    completed = [o for o in outcomes if o.status is AgentStatus.COMPLETED]
    missing = [o for o in outcomes if o.status is not AgentStatus.COMPLETED]
    quorum = request.required_proposals
    met = len(completed) >= quorum
    summary = f"{len(completed)} of {len(outcomes)} proposals (quorum {quorum}) " + (
        "met" if met else "not met"
    )
    if missing:
        summary += "; missing: " + ", ".join(f"{o.agent_id} ({o.status})" for o in missing)
    return DeliberationResult(
        deliberation_id=deliberation_id,
        task_id=request.task_id or deliberation_id,
        status=DeliberationStatus.COMPLETED if met else DeliberationStatus.FAILED,
        quorum=quorum,
        completed=len(completed),
        missing=[o.agent_id for o in missing],
        outcomes=list(outcomes),
        prompt_tokens=sum(o.proposal.prompt_tokens or 0 for o in completed if o.proposal),
        completion_tokens=sum(o.proposal.completion_tokens or 0 for o in completed if o.proposal),
        started_at=started_at,
        duration_ms=int((finished_at - started_at).total_seconds() * 1000),
        summary=summary,
    )

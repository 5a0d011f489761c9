"""Outcomes and proposals for tests, with defaults a test overrides where it cares."""

from __future__ import annotations

from typing import Any

from agents.models import AgentOutcome, AgentStatus, ErrorInfo, Proposal, Stage, StageCall
from agents.roles import Role

# What another service published on agent.response.completed (issue 14): no schema of ours.
FOREIGN_PROPOSAL = {
    "task_id": "task-123",
    "agent_id": "agent-dev-001",
    "role": "DEV",
    "proposal": {"content": "...", "author_id": "agent-dev-001", "author_role": "DEV", "tokens": 150},
    "timestamp": 1764000000,
}


def proposal(agent_id: str = "agent-dev-001", role: Role = Role.DEV, **fields: Any) -> Proposal:
    defaults: dict[str, Any] = {
        "content": "x",
        "model": "m",
        "temperature": 0.7,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "latency_ms": 1,
    }
    return Proposal(author_id=agent_id, author_role=role, **(defaults | fields))


def completed(agent_id: str = "agent-dev-001", role: Role = Role.DEV, **fields: Any) -> AgentOutcome:
    return AgentOutcome(
        agent_id=agent_id,
        role=role,
        status=AgentStatus.COMPLETED,
        proposal=fields.pop("proposal", None) or proposal(agent_id, role),
        **({"attempts": 1, "duration_ms": 1} | fields),
    )


def failed(
    agent_id: str = "agent-dev-001",
    role: Role = Role.DEV,
    status: AgentStatus = AgentStatus.FAILED,
    error: ErrorInfo | None = None,
    **fields: Any,
) -> AgentOutcome:
    return AgentOutcome(
        agent_id=agent_id,
        role=role,
        status=status,
        error=error or ErrorInfo(type="LLMRejected", message="400", retryable=False),
        **({"attempts": 1, "duration_ms": 1} | fields),
    )


def critique(critic_id: str = "agent-qa-001", author_id: str = "agent-dev-001", **fields: Any) -> StageCall:
    """A finished round-1 critique by `critic_id` of `author_id`'s proposal."""
    return StageCall(
        call_id=f"{critic_id}.critique.r1.{author_id}",
        stage=Stage.CRITIQUE,
        agent_id=critic_id,
        round=1,
        subject_id=author_id,
        **({"status": AgentStatus.COMPLETED, "content": "Add tests."} | fields),
    )

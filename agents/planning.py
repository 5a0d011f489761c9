"""Who deliberates: the council's members, the model endpoint each speaks through, who
critiques whom, and the most calls one stage has in flight."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from agents.config import DEFAULT_ENDPOINT
from agents.models import CHAIR_ID, AgentSpec, DeliberationRequest

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

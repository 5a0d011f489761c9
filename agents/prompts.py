"""The one place that turns a request and an agent into chat messages.

The system message holds what every agent of a deliberation shares (the council's
instructions, the task, the constraints), word for word, so vLLM's prefix cache serves it
once; the role-specific part comes last, in the user message.
"""

from __future__ import annotations

from agents.models import AgentSpec, Constraints, DeliberationRequest
from agents.roles import PERSONAS

COUNCIL_PREAMBLE = (
    "You are a member of a council of software engineers. Each member proposes how to "
    "carry out the task below from the viewpoint of their role. Proposals are compared, "
    "so be concrete: the approach, the key code or configuration, and the risks."
)

DIVERGE_INSTRUCTION = (
    "Other members of your role are answering too: take a distinctly different approach "
    "from the most obvious one."
)


def render_constraints(constraints: Constraints) -> str:
    parts = []
    if constraints.rubric:
        parts.append(f"Rubric:\n{constraints.rubric}")
    if constraints.requirements:
        parts.append("Requirements:\n" + "\n".join(f"- {r}" for r in constraints.requirements))
    if constraints.metadata:
        parts.append("Context:\n" + "\n".join(f"- {k}: {v}" for k, v in sorted(constraints.metadata.items())))
    return "\n\n".join(parts)


def shared_context(request: DeliberationRequest) -> str:
    sections = [COUNCIL_PREAMBLE, f"Task:\n{request.task}"]
    constraints = render_constraints(request.constraints)
    if constraints:
        sections.append(constraints)
    return "\n\n".join(sections)


def role_instruction(agent: AgentSpec) -> str:
    persona = PERSONAS[agent.role]
    lines = [
        f"You are the council's {persona.title} ({agent.role}).",
        f"Focus on {persona.focus}.",
    ]
    if agent.diverge:
        lines.append(DIVERGE_INSTRUCTION)
    lines.append("Write your proposal now.")
    return " ".join(lines)


def proposal_messages(request: DeliberationRequest, agent: AgentSpec) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": shared_context(request)},
        {"role": "user", "content": role_instruction(agent)},
    ]

"""The one place that turns a request and an agent into chat messages.

The system message holds what every agent of a deliberation shares (the council's
instructions, the task, the constraints, the code the task is about), word for word, so
vLLM's prefix cache serves it once; the role-specific part comes last, in the user message.
"""

from __future__ import annotations

from agents.context import FittedContext, ShownText, fit_context, named
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


def _tagged(tag: str, shown: ShownText, attributes: str = "") -> str:
    if shown.cut:
        attributes += f' shown="lines 1-{shown.lines_shown} of {shown.lines}"'
    return f"<{tag}{attributes}>\n{shown.text.rstrip(chr(10))}\n</{tag}>"


def render_code(fitted: FittedContext) -> str:
    """The diff and the files, each in its own tags, and what did not fit, in so many words."""
    parts = []
    if fitted.diff is not None:
        parts.append("The changes the task is about:\n" + _tagged("diff", fitted.diff))
    if fitted.files:
        listed = "\n".join(_tagged("file", shown, f' path="{shown.path}"') for shown in fitted.files)
        parts.append(f"The project's files:\n{listed}")
    if fitted.left_out:
        parts.append(f"(Left out for length: {named(fitted.left_out)}.)")
    return "\n\n".join(parts)


def shared_context(request: DeliberationRequest) -> str:
    sections = [COUNCIL_PREAMBLE, f"Task:\n{request.task}"]
    constraints = render_constraints(request.constraints)
    if constraints:
        sections.append(constraints)
    code = render_code(fit_context(request))
    if code:
        sections.append(code)
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


def _council_messages(request: DeliberationRequest, instruction: str) -> list[dict[str, str]]:
    # Every call of a deliberation shares the system message, word for word.
    return [
        {"role": "system", "content": shared_context(request)},
        {"role": "user", "content": instruction},
    ]


# Asked where the member's server holds the answer to agents.proposal_form's schema. No
# filled-in example: a small model copies one word for word.
STRUCTURED_INSTRUCTION = (
    'Answer with a JSON object only. Its "explanation" is a short paragraph on your approach '
    'and its risks. Its "solution" is the complete Python code, without tests (empty if you '
    'propose only tests). Its "tests" are pytest test functions (test_...) for the solution.'
)


def proposal_messages(
    request: DeliberationRequest, agent: AgentSpec, structured: bool = False
) -> list[dict[str, str]]:
    """An agent's proposal; `structured`: in agents.proposal_form's JSON form, which the
    agent's server holds it to."""
    instruction = role_instruction(agent)
    if structured:
        instruction += " " + STRUCTURED_INSTRUCTION
    return _council_messages(request, instruction)


def _persona_line(agent: AgentSpec) -> str:
    persona = PERSONAS[agent.role]
    return f"You are the council's {persona.title} ({agent.role}); you focus on {persona.focus}."


def critique_messages(request: DeliberationRequest, critic: AgentSpec, proposal: str) -> list[dict[str, str]]:
    """A critic reviews another member's proposal; the author is not named."""
    return _council_messages(
        request,
        (
            f"{_persona_line(critic)} Another council member wrote the proposal below. "
            "Critique it against the task, the rubric and the requirements: what is wrong "
            "or missing, what is risky, and what to change. Be specific and brief.\n\n"
            f"<proposal>\n{proposal}\n</proposal>"
        ),
    )


def revision_messages(
    request: DeliberationRequest,
    author: AgentSpec,
    proposal: str,
    critiques: list[str],
    structured: bool = False,
) -> list[dict[str, str]]:
    """The author revises its proposal with the critiques it received; `structured`: in
    the proposal's JSON form."""
    listed = "\n\n".join(f"<critique>\n{text}\n</critique>" for text in critiques)
    answer = STRUCTURED_INSTRUCTION if structured else "Answer with the proposal only."
    return _council_messages(
        request,
        (
            f"{_persona_line(author)} This is your proposal:\n\n<proposal>\n{proposal}\n</proposal>\n\n"
            f"Other council members critiqued it:\n\n{listed}\n\n"
            "Write the complete revised proposal. Adopt the critiques you agree with; "
            f"keep what was right. {answer}"
        ),
    )


def ranking_messages(
    request: DeliberationRequest, reviewer: AgentSpec, labelled: dict[str, str], as_json: bool = False
) -> list[dict[str, str]]:
    """Anonymized ranking: proposals appear only under their labels, never with an author.
    `as_json`: the answer is a JSON ballot (agents.ranking.ballot_schema), which the
    reviewer's server holds it to; else it ends with a FINAL RANKING section."""
    shown = "\n\n".join(f"Proposal {name}:\n{text}" for name, text in labelled.items())
    if as_json:
        # No filled-in example: a small model copies one word for word, order and all.
        listed = ", ".join(f'"{name}"' for name in labelled)
        answer = (
            'Answer with a JSON object only. Its "ranking" lists the labels '
            f'{listed}, each exactly once, best first. Its "reasons" gives, for each label, '
            "one short sentence of your own on that proposal's strengths or flaws."
        )
    else:
        example = "\n".join(f"{i}. Proposal {name}" for i, name in enumerate(labelled, start=1))
        answer = (
            "Briefly assess each one. Then end your answer with the line FINAL RANKING: "
            "followed by a numbered list of every proposal label, best first, exactly "
            f"in this form:\n\nFINAL RANKING:\n{example}"
        )
    return _council_messages(
        request,
        (
            f"{_persona_line(reviewer)} Rank these anonymous proposals for the task, best "
            "first, judged by the rubric and the requirements.\n\n"
            f"{shown}\n\n{answer}"
        ),
    )


def synthesis_messages(request: DeliberationRequest, ranked: list[str]) -> list[dict[str, str]]:
    """The chair merges the best proposals, the winner first."""
    shown = "\n\n".join(f"<proposal rank={i}>\n{text}\n</proposal>" for i, text in enumerate(ranked, start=1))
    return _council_messages(
        request,
        (
            "You chair the council. Its best proposals follow, ranked by the council, "
            f"best first.\n\n{shown}\n\n"
            "Write one final proposal that builds on the first and adopts the strongest "
            "ideas of the others. Answer with the proposal only."
        ),
    )

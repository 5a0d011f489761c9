"""What a deliberation looks like to people: one row per agent (the CLI's table and the
Prefect table artifact) and a markdown report (the Prefect markdown artifact)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from agents.models import AgentOutcome, DeliberationRequest, DeliberationResult, ProposalScore, Stage, Usage

PREVIEW_CHARS = 80
MAX_KEY_CHARS = 100


def artifact_key(task_id: str) -> str:
    """The Prefect artifact key of a task's deliberation report: stable per task, so the
    Artifacts page lists its deliberations over time. Keys take lowercase letters, digits
    and dashes only."""
    slug = re.sub(r"[^a-z0-9]+", "-", task_id.lower()).strip("-") or "task"
    return f"deliberation-{slug}"[:MAX_KEY_CHARS].rstrip("-")


def first_line(text: str, limit: int = PREVIEW_CHARS) -> str:
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def outcome_row(outcome: AgentOutcome, score: ProposalScore | None = None) -> dict[str, str | int]:
    proposal = outcome.proposal
    tokens = latency = preview = model = ""
    if proposal is not None:
        model = proposal.model
        tokens = f"{proposal.prompt_tokens or 0}+{proposal.completion_tokens or 0}"
        latency = f"{proposal.latency_ms / 1000:.1f}s"
        preview = first_line(proposal.content)
    elif outcome.error is not None:
        preview = f"{outcome.error.type}: {first_line(outcome.error.message)}"
    return {
        "agent": outcome.agent_id,
        "role": str(outcome.role),
        "model": model,
        "status": str(outcome.status),
        "score": f"{score.score:.2f}" if score else "",
        "rank": score.rank if score else "",
        "attempts": outcome.attempts,
        "tokens": tokens,
        "latency": latency,
        "proposal": preview,
    }


def outcome_rows(result: DeliberationResult) -> list[dict[str, str | int]]:
    scores = {score.agent_id: score for score in result.scores}
    return [outcome_row(outcome, scores.get(outcome.agent_id)) for outcome in result.outcomes]


def _usage_line(name: str, usage: Usage, wall_ms: int | None = None) -> str:
    wall = f"{wall_ms / 1000:.1f}s" if wall_ms is not None else ""
    return (
        f"| {name} | {usage.calls} | {usage.prompt_tokens} | {usage.completion_tokens} "
        f"| {usage.latency_ms / 1000:.1f}s | {wall} |"
    )


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" for line in text.strip().splitlines()) or "> (empty)"


def models_line(models: Mapping[str, str]) -> str:
    """Which model each member speaks through, by agent id: `m` for one, else
    `m1 (agent-dev-001, ...); m2 (...)`."""
    speakers: dict[str, list[str]] = {}
    for agent_id, model in models.items():
        speakers.setdefault(model, []).append(agent_id)
    if len(speakers) == 1:
        return next(iter(speakers))
    return "; ".join(f"{model} ({', '.join(agents)})" for model, agents in speakers.items())


def settings_lines(request: DeliberationRequest, models: Mapping[str, str]) -> list[str]:
    """What the run was asked to do and under which limits."""
    roles = ", ".join(str(role) for role in request.roles)
    expects = "code" if request.code_expected else "any answer"
    code = "run against the other members' tests" if request.run_code else "not run"
    return [
        "## Settings",
        "",
        "| | |",
        "|---|---|",
        f"| task id | {request.task_id or '(the deliberation id)'} |",
        f"| council | {roles}; {request.agents_per_role} agent(s) per role |",
        f"| quorum | {request.required_proposals} of {request.agent_count} proposals |",
        f"| deadline | {request.deadline_seconds:g} s, from the deliberation's first start |",
        f"| review | {request.rounds} round(s), {request.critics} critic(s) per proposal |",
        f"| synthesis | {'yes' if request.synthesize else 'no'} |",
        f"| evidence | expects {expects} ({request.expects}); code {code} |",
        f"| model | {models_line(models) if models else '(not chosen)'} |",
        f"| sampling | temperature {request.temperature:g}, at most {request.max_tokens} tokens |",
        *([f"| context | {context_line(request)} |"] if request.context or request.diff else []),
        "",
    ]


def context_line(request: DeliberationRequest) -> str:
    """How much code the request carried, and the budget each prompt showed it within."""
    chars = sum(len(file.content) for file in request.context)
    parts = [f"{len(request.context)} file(s), {chars:,} characters"] if request.context else []
    parts += [f"a diff of {len(request.diff):,} characters"] if request.diff else []
    return "; ".join(parts) + f"; at most {request.context_tokens} tokens of it per prompt"


def markdown_report(
    result: DeliberationResult,
    request: DeliberationRequest | None = None,
    models: Mapping[str, str] | None = None,
) -> str:
    """The winner and why, every score and check, the critiques and ballots, what is
    missing, the token and latency totals, and (given the request) the settings."""
    out = [f"# Deliberation `{result.deliberation_id}`", "", f"**{result.status}**: {result.summary}", ""]
    if result.winner is not None:
        w = result.winner
        out += [f"## Winner: {w.agent_id} ({w.role}), score {w.score:.2f}", "", w.reason + "."]
        if w.tie_break:
            out += ["", f"Tie-break: {w.tie_break}."]
        out += ["", _quote(w.content), ""]
    if result.synthesis is not None and result.synthesis.content:
        out += ["## Synthesis", "", _quote(result.synthesis.content), ""]
    if result.scores:
        out += [
            "## Scores",
            "",
            "| rank | agent | role | version | score | peer | ballots | checks |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in result.scores:
            peer = f"{s.peer_score:.2f}" if s.peer_score is not None else "–"
            checks = "; ".join(
                f"{'✓' if c.passed else '✗' if c.applicable else '–'} {c.name}: {c.detail}" for c in s.checks
            )
            out.append(
                f"| {s.rank} | {s.agent_id} | {s.role} | {s.version} | {s.score:.2f} | {peer} "
                f"| {s.ballots} | {checks} |"
            )
        out.append("")
    critiques = [c for c in result.reviews if c.stage is Stage.CRITIQUE and c.ok]
    if critiques:
        out += ["## Critiques", ""]
        for c in critiques:
            out += [
                f"**Round {c.round}: {c.agent_id} on {c.subject_id}** ({c.model})",
                "",
                _quote(c.content or ""),
                "",
            ]
    if result.ballots:
        out += ["## Ballots", ""]
        for b in result.ballots:
            verdict = f"abstained ({b.abstained})" if b.abstained else " > ".join(b.order)
            notes = f" ({'; '.join(b.notes)})" if b.notes else ""
            model = f" [{b.model}]" if b.model else ""
            out.append(f"- {b.reviewer_id}{model}: {verdict}{notes}")
            out += [f"  - {agent_id}: {reason}" for agent_id, reason in b.reasons.items()]
        out.append("")
    if result.incomplete:
        out += ["## Missing", "", *(f"- {gap}" for gap in result.incomplete), ""]
    usage = result.usage
    out += [
        "## Usage",
        "",
        "| | calls | prompt tokens | completion tokens | call latency | wall |",
        "|---|---|---|---|---|---|",
    ]
    out += [_usage_line(stage, u, usage.stage_ms.get(stage)) for stage, u in usage.by_stage.items()]
    out += [_usage_line(agent, u) for agent, u in usage.by_agent.items()]
    out.append(_usage_line("**total**", usage.total, result.duration_ms))
    if request is not None:
        out += ["", *settings_lines(request, models or {})]
    return "\n".join(out) + "\n"


def render_table(rows: list[dict[str, str | int]]) -> str:
    if not rows:
        return ""
    headers = list(rows[0])
    cells = [[str(row[h]) for h in headers] for row in rows]
    widths = [max(len(h), *(len(line[i]) for line in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(line.rstrip() for line in lines)

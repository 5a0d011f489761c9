"""One row per agent, shared by the CLI's table and the Prefect table artifact."""

from __future__ import annotations

from agents.models import AgentOutcome, DeliberationResult

PREVIEW_CHARS = 80


def first_line(text: str, limit: int = PREVIEW_CHARS) -> str:
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def outcome_row(outcome: AgentOutcome) -> dict[str, str | int]:
    proposal = outcome.proposal
    tokens = latency = preview = ""
    if proposal is not None:
        tokens = f"{proposal.prompt_tokens or 0}+{proposal.completion_tokens or 0}"
        latency = f"{proposal.latency_ms / 1000:.1f}s"
        preview = first_line(proposal.content)
    elif outcome.error is not None:
        preview = f"{outcome.error.type}: {first_line(outcome.error.message)}"
    return {
        "agent": outcome.agent_id,
        "role": str(outcome.role),
        "status": str(outcome.status),
        "attempts": outcome.attempts,
        "tokens": tokens,
        "latency": latency,
        "proposal": preview,
    }


def outcome_rows(result: DeliberationResult) -> list[dict[str, str | int]]:
    return [outcome_row(outcome) for outcome in result.outcomes]


def render_table(rows: list[dict[str, str | int]]) -> str:
    if not rows:
        return ""
    headers = list(rows[0])
    cells = [[str(row[h]) for h in headers] for row in rows]
    widths = [max(len(h), *(len(line[i]) for line in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(line.rstrip() for line in lines)

"""Peer ranking and the verdict: anonymized ballots, their parsing, Borda aggregation,
deterministic checks combined into one score, and an explicit tie-break. Pure: no I/O.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

from agents.checks import check_score, run_checks
from agents.models import Ballot, ProposalScore, Role, Winner

PEER_WEIGHT = 0.5  # the rest is the checks' weight
RANKING_MARKER = "FINAL RANKING"
TIE_EPSILON = 1e-9

_LABEL = re.compile(r"\bProposal\s+([A-Z]{1,2})\b")


class RankingParseError(ValueError):
    """The reviewer's answer holds no usable ranking: the ballot is an abstention."""


@dataclass(frozen=True)
class Candidate:
    """A proposal in its final version, as the verdict sees it."""

    agent_id: str
    role: Role
    version: int
    content: str
    finish_reason: str | None


def label(index: int) -> str:
    """A, B, ... Z, AA, AB, ...: two letters cover the largest council."""
    letters = string.ascii_uppercase
    return letters[index] if index < 26 else letters[index // 26 - 1] + letters[index % 26]


def anonymize(deliberation_id: str, reviewer_id: str, candidates: Sequence[str]) -> dict[str, str]:
    """Label -> agent id for one reviewer: the reviewer's own proposal left out and the order
    shuffled per reviewer (seeded, so a retried call sees the same prompt)."""
    others = [agent for agent in candidates if agent != reviewer_id]
    random.Random(f"{deliberation_id}:{reviewer_id}").shuffle(others)
    return {label(i): agent for i, agent in enumerate(others)}


def parse_ranking(text: str, labels: Sequence[str]) -> list[str]:
    """The labels in ranked order, read from the reviewer's FINAL RANKING section.
    Raises RankingParseError unless it names every label exactly once and nothing else."""
    position = text.upper().rfind(RANKING_MARKER)
    if position < 0:
        raise RankingParseError(f"no {RANKING_MARKER} section")
    named = _LABEL.findall(text[position + len(RANKING_MARKER) :])
    order = list(dict.fromkeys(named))
    unknown = [name for name in order if name not in labels]
    if unknown:
        raise RankingParseError(f"ranks unknown proposal(s) {', '.join(unknown)}")
    if len(order) != len(labels):
        raise RankingParseError(f"ranks {len(order)} of {len(labels)} proposals")
    return order


def ballot_from_answer(reviewer_id: str, labels: dict[str, str], answer: str) -> Ballot:
    try:
        order = parse_ranking(answer, list(labels))
    except RankingParseError as exc:
        return Ballot(reviewer_id=reviewer_id, labels=labels, abstained=f"malformed ranking: {exc}")
    return Ballot(reviewer_id=reviewer_id, labels=labels, order=[labels[name] for name in order])


def peer_scores(ballots: Sequence[Ballot]) -> dict[str, tuple[float, int]]:
    """Agent id -> (mean normalized Borda points, ballots counted). First place is worth 1,
    last 0, so ballots of different sizes weigh the same."""
    points: dict[str, list[float]] = {}
    for ballot in ballots:
        if ballot.abstained or len(ballot.order) < 2:
            continue
        last = len(ballot.order) - 1
        for position, agent in enumerate(ballot.order):
            points.setdefault(agent, []).append((last - position) / last)
    return {agent: (sum(p) / len(p), len(p)) for agent, p in points.items()}


def score_candidates(
    candidates: Sequence[Candidate], ballots: Sequence[Ballot], requirements: Sequence[str]
) -> list[ProposalScore]:
    """Every candidate scored and ranked, best first. Ties on the score are broken by the
    checks, then by the peer score, then by council order (the order of `candidates`)."""
    peers = peer_scores(ballots)
    unranked = []
    for order, candidate in enumerate(candidates):
        checks = run_checks(candidate.content, candidate.finish_reason, requirements)
        checked = check_score(checks)
        peer, counted = peers.get(candidate.agent_id, (None, 0))
        score = checked if peer is None else PEER_WEIGHT * peer + (1 - PEER_WEIGHT) * checked
        unranked.append(
            (
                (-round(score, 9), -round(checked, 9), -(peer or 0.0), order),
                ProposalScore(
                    agent_id=candidate.agent_id,
                    role=candidate.role,
                    version=candidate.version,
                    peer_score=None if peer is None else round(peer, 4),
                    ballots=counted,
                    checks=checks,
                    check_score=round(checked, 4),
                    score=round(score, 4),
                    rank=1,
                ),
            )
        )
    unranked.sort(key=lambda item: item[0])
    return [score.model_copy(update={"rank": rank}) for rank, (_, score) in enumerate(unranked, start=1)]


def tie_break(scores: Sequence[ProposalScore]) -> str | None:
    """How first place was decided when others had the same score, or None."""
    if len(scores) < 2:
        return None
    first = scores[0]
    tied = [s for s in scores[1:] if abs(s.score - first.score) < TIE_EPSILON]
    if not tied:
        return None
    names = ", ".join([first.agent_id, *(s.agent_id for s in tied)])
    runner_up = tied[0]
    if first.check_score != runner_up.check_score:
        how = "the better check score"
    elif (first.peer_score or 0.0) != (runner_up.peer_score or 0.0):
        how = "the better peer score"
    else:
        how = "council order (the earlier agent)"
    return f"tie at score {first.score:.2f} between {names}, broken by {how}"


def choose_winner(scores: Sequence[ProposalScore], candidates: Sequence[Candidate]) -> Winner | None:
    if not scores:
        return None
    best = scores[0]
    content = next(c.content for c in candidates if c.agent_id == best.agent_id)
    checks = ", ".join(f"{c.name} {c.score:.2f}" for c in best.checks if c.applicable)
    peer = (
        f"peer score {best.peer_score:.2f} from {best.ballots} ballot(s)"
        if best.peer_score is not None
        else "no peer ballots"
    )
    return Winner(
        agent_id=best.agent_id,
        role=best.role,
        score=best.score,
        version=best.version,
        content=content,
        reason=f"{best.agent_id} ({best.role}) ranks first with score {best.score:.2f}: "
        f"{peer}; checks {checks}",
        tie_break=tie_break(scores),
    )

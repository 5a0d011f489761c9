"""Peer ranking and the verdict: anonymized ballots, their parsing, Borda aggregation,
deterministic checks combined into one score, and an explicit tie-break. Pure: no I/O.

The order: a proposal that fails a required check ranks below every one that passes them
all; then one failing the user's tests below those passing them; then code contradicting
itself (its docstrings' examples, its own author's tests) below code that does not; then
by the tests of members who proposed no solution; then, on a code task whose code was run,
code that passed the other members' tests ranks above code none of them reached, which
ranks above code that failed; then the score. The winner says which of them decided.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.checks import check_score, run_checks
from agents.evidence import INDEPENDENT_CHECK, OWN_TESTS_CHECK, STATED_CHECK, USER_CHECK, tested_standing
from agents.models import Ballot, CheckResult, DecidedBy, ProposalScore, Role, Tested, Winner

PEER_WEIGHT = 0.5  # the rest is the checks' weight
RANKING_MARKER = "FINAL RANKING"
# Scores are compared at the precision they are reported with, so a tie the report shows is
# the tie the ranking saw.
SCORE_DIGITS = 4
TESTED_ORDER: tuple[Tested, ...] = ("passed", "untested", "failed")
_TESTED_SAYS: dict[Tested, str] = {
    "passed": "passed the other members' tests",
    "untested": "was reached by none of the other members' tests",
    "failed": "failed tests_pass",
}

# Found in the text as written: upper-casing first can change lengths ("ß" -> "SS") and
# shift the position applied to the original.
_MARKER = re.compile(r"FINAL\s+RANKING", re.IGNORECASE)
_LABEL = re.compile(r"\bProposal\s+([A-Z]{1,2})\b")
# A JSON ballot cut short (at max_tokens) still holds its ranking: it comes first.
_JSON_RANKING = re.compile(r'"ranking"\s*:\s*\[([^\]]*)\]')
_QUOTED = re.compile(r'"([^"]*)"')

# Up to this many labels, the ballot's schema lists every order: a constrained answer then
# names each label exactly once. Beyond, it lists labels (24 orders of 4, 120 of 5).
EVERY_ORDER_UP_TO = 4
REASON_CHARS = 200


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


@dataclass
class ReadBallot:
    """A ranking as read from a reviewer's answer: labels best first, notes on what was
    left out, and the reasons given (JSON ballots), by label."""

    order: list[str]
    notes: list[str]
    reasons: dict[str, str] = field(default_factory=dict)


def ballot_schema(labels: Sequence[str]) -> dict[str, Any]:
    """The JSON schema of a ballot over `labels`: `ranking`, the labels best first, then
    `reasons`, a short one per label. Up to EVERY_ORDER_UP_TO labels, `ranking` is one of
    their orders, so each label appears exactly once; beyond, any label in each place,
    exactly as many places (a label named twice counts once, as in a text ballot)."""
    names = list(labels)
    ranking: dict[str, Any]
    if len(names) <= EVERY_ORDER_UP_TO:
        ranking = {"enum": [list(order) for order in itertools.permutations(names)]}
    else:
        ranking = {
            "type": "array",
            "items": {"type": "string", "enum": names},
            "minItems": len(names),
            "maxItems": len(names),
        }
    return {
        "type": "object",
        "properties": {
            "ranking": ranking,
            "reasons": {
                "type": "object",
                "properties": {name: {"type": "string", "maxLength": REASON_CHARS} for name in names},
                "required": names,
                "additionalProperties": False,
            },
        },
        "required": ["ranking", "reasons"],
        "additionalProperties": False,
    }


def parse_json_ballot(text: str, labels: Sequence[str]) -> ReadBallot:
    """A JSON ballot (`ballot_schema`), read as `parse_ranking` reads a text one; labels may
    be written `B` or `Proposal B`. One cut short keeps the ranking it holds. Raises
    RankingParseError if the answer holds no JSON ranking."""
    stripped = text.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        parsed = json.loads(stripped)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("ranking"), list):
        written = [str(item) for item in parsed["ranking"]]
        raw_reasons = parsed.get("reasons")
    elif match := _JSON_RANKING.search(text):
        written, raw_reasons = _QUOTED.findall(match.group(1)), None
    else:
        raise RankingParseError("no JSON ranking")
    names = [item.strip().removeprefix("Proposal").strip() for item in written]
    order, notes = _read_order(names, labels, "the JSON ranking")
    reasons = {}
    if isinstance(raw_reasons, dict):
        for key, reason in raw_reasons.items():
            name = str(key).strip().removeprefix("Proposal").strip()
            if name in labels and isinstance(reason, str) and reason.strip():
                reasons[name] = reason.strip()[:REASON_CHARS]
    return ReadBallot(order, notes, reasons)


def parse_ranking(text: str, labels: Sequence[str]) -> tuple[list[str], list[str]]:
    """The labels in ranked order, read as written from the reviewer's last FINAL RANKING
    section, and notes on what was left out: a label named again or not shown to the
    reviewer is dropped, and a partial ranking counts for the labels it ranks. Raises
    RankingParseError if there is no such section or it names no shown label."""
    markers = list(_MARKER.finditer(text))
    if not markers:
        raise RankingParseError(f"no {RANKING_MARKER} section")
    return _read_order(_LABEL.findall(text[markers[-1].end() :]), labels, f"the {RANKING_MARKER} section")


def _read_order(names: Sequence[str], labels: Sequence[str], where: str) -> tuple[list[str], list[str]]:
    order: list[str] = []
    notes: list[str] = []
    for name in names:
        if name not in labels:
            notes.append(f"Proposal {name} was not shown: dropped")
        elif name in order:
            notes.append(f"Proposal {name} ranked again: the first place given stands")
        else:
            order.append(name)
    if not order:
        raise RankingParseError(f"{where} names no proposal shown")
    if len(order) < len(labels):
        unranked = ", ".join(f"Proposal {name}" for name in labels if name not in order)
        notes.append(f"ranks {len(order)} of {len(labels)} proposals; unranked: {unranked}")
    return order, notes


def read_ballot(answer: str, labels: Sequence[str], as_json: bool) -> ReadBallot:
    """The ranking in a reviewer's answer: a FINAL RANKING section, or, when a JSON ballot
    was asked for, that ballot, else a FINAL RANKING section (a server may not hold the
    answer to the schema). Raises RankingParseError saying what it looked for."""
    if not as_json:
        return ReadBallot(*parse_ranking(answer, labels))
    try:
        return parse_json_ballot(answer, labels)
    except RankingParseError as not_json:
        try:
            return ReadBallot(*parse_ranking(answer, labels))
        except RankingParseError as not_text:
            raise RankingParseError(f"{not_json}, and {not_text}") from None


def ballot_from_answer(
    reviewer_id: str, labels: dict[str, str], answer: str, as_json: bool = False, model: str | None = None
) -> Ballot:
    try:
        read = read_ballot(answer, list(labels), as_json)
    except RankingParseError as exc:
        return Ballot(
            reviewer_id=reviewer_id, labels=labels, model=model, abstained=f"malformed ranking: {exc}"
        )
    return Ballot(
        reviewer_id=reviewer_id,
        labels=labels,
        model=model,
        order=[labels[name] for name in read.order],
        notes=read.notes,
        reasons={labels[name]: reason for name, reason in read.reasons.items()},
    )


def peer_scores(ballots: Sequence[Ballot]) -> dict[str, tuple[float, int]]:
    """Agent id -> (mean normalized Borda points, ballots counted). Points are over the
    proposals the reviewer was shown: first place is worth 1, last 0, so ballots of
    different sizes weigh the same; a partial ballot gives points to those it ranks."""
    points: dict[str, list[float]] = {}
    for ballot in ballots:
        if ballot.abstained or len(ballot.labels) < 2:
            continue
        last = len(ballot.labels) - 1
        for position, agent in enumerate(ballot.order):
            points.setdefault(agent, []).append((last - position) / last)
    return {agent: (sum(p) / len(p), len(p)) for agent, p in points.items()}


def score_candidates(
    candidates: Sequence[Candidate],
    ballots: Sequence[Ballot],
    requirements: Sequence[str],
    code_expected: bool = False,
    executed: Mapping[str, CheckResult] | None = None,
    tested: Mapping[str, Tested] | None = None,
    specified: Mapping[str, Sequence[CheckResult]] | None = None,
) -> list[ProposalScore]:
    """Every candidate scored and ranked, best first; `executed` adds a check made by
    running a candidate's code (by agent id). A candidate that fails a required
    check (say, no code for a code task) ranks below every one that passes them all,
    whatever its score. Next, what the specification says (`specified`, by agent id): one
    that fails any of the user's own tests (the request's examples and test file) ranks
    below every one that passes them all, then one whose code contradicts the examples of
    its own docstrings below one that does not. On a code task with `executed`, how the
    other members' tests went
    (`tested`, given or read from the check: passed, untested, failed) ranks next, then
    the score. Ties on the score are
    broken by the checks, then by the peer score, then by council order (the order of
    `candidates`)."""
    peers = peer_scores(ballots)
    scores = []
    for candidate in candidates:
        checks = run_checks(candidate.content, candidate.finish_reason, requirements, code_expected)
        ran = executed.get(candidate.agent_id) if executed is not None else None
        if ran is not None:
            checks.append(ran)
        if specified is not None:
            checks += specified.get(candidate.agent_id, [])
        checked = check_score(checks)
        peer, counted = peers.get(candidate.agent_id, (None, 0))
        score = checked if peer is None else PEER_WEIGHT * peer + (1 - PEER_WEIGHT) * checked
        scores.append(
            ProposalScore(
                agent_id=candidate.agent_id,
                role=candidate.role,
                version=candidate.version,
                peer_score=None if peer is None else round(peer, SCORE_DIGITS),
                ballots=counted,
                checks=checks,
                check_score=round(checked, SCORE_DIGITS),
                score=round(score, SCORE_DIGITS),
                rank=1,
                tested=(tested or {}).get(candidate.agent_id, tested_standing(ran))
                if code_expected and executed is not None
                else None,
            )
        )
    # Compared as reported (rounded), so a tie the report shows is the tie the ranking saw.
    ranked = sorted(
        enumerate(scores),
        key=lambda item: (
            *_standing(item[1]),
            -item[1].score,
            -item[1].check_score,
            -(item[1].peer_score or 0.0),
            item[0],
        ),
    )
    return [score.model_copy(update={"rank": rank}) for rank, (_, score) in enumerate(ranked, start=1)]


def _standing(score: ProposalScore) -> tuple[bool, bool, bool, tuple[int, float], int]:
    """What ranks before the score: required checks passed, then the user's tests, then
    whether its code contradicts itself (its own docstrings' examples, its own author's
    tests), then the independent testers' tests (passed, none reached it, failed: the more
    of them passed the better), then how the other members' tests went."""
    return (
        _fails_required(score),
        _fails_user_tests(score),
        _contradicts_itself(score),
        _independent_standing(score),
        TESTED_ORDER.index(score.tested) if score.tested else 0,
    )


# The elements of `_standing`, in order: the evidence each one is (`Winner.decided_by`).
_STANDING_EVIDENCE: tuple[DecidedBy, ...] = (
    "required_checks",
    "user_tests",
    "self_contradiction",
    "independent_tests",
    "members_tests",
)
_DECIDED_SAYS: dict[DecidedBy, str] = {
    "required_checks": "the required checks",
    "user_tests": "your tests",
    "self_contradiction": "{runner_up}'s code contradicting its docstring's examples or its author's tests",
    "independent_tests": "the tests of members without a solution of their own",
    "members_tests": "the other members' tests, weighed by how far the solutions agree with them",
    "ballots": "the ballots",
    "checks": "the checks",
    "score": "the score (ballots and checks)",
    "council_order": "council order",
    "sole_candidate": "being the only candidate",
}


def _fails(score: ProposalScore, check: str) -> bool:
    return any(c.name == check and c.applicable and not c.passed for c in score.checks)


def _fails_user_tests(score: ProposalScore) -> bool:
    return _fails(score, USER_CHECK)


def _contradicts_itself(score: ProposalScore) -> bool:
    return _fails(score, STATED_CHECK) or _fails(score, OWN_TESTS_CHECK)


def _independent_standing(score: ProposalScore) -> tuple[int, float]:
    check = next((c for c in score.checks if c.name == INDEPENDENT_CHECK and c.applicable), None)
    if check is None:
        return (1, 0.0)
    return (0, 0.0) if check.passed else (2, -check.score)


def _specification_says(score: ProposalScore) -> str | None:
    said = []
    if any(c.name == USER_CHECK and c.applicable for c in score.checks):
        said.append("failed your tests" if _fails_user_tests(score) else "passed your tests")
    if _fails(score, STATED_CHECK):
        said.append("contradicts its own docstring's examples")
    if _fails(score, OWN_TESTS_CHECK):
        said.append("fails its own author's tests")
    if (independent := _independent_standing(score))[0] != 1:
        said.append(
            "passed the tests of members without a solution"
            if independent[0] == 0
            else "failed tests of members without a solution"
        )
    return ", ".join(said) or None


def decided_by(scores: Sequence[ProposalScore]) -> DecidedBy:
    """Which evidence put the first above the second: the first part of the ranking's order
    where they differ (`_standing`, then the score: ballots or checks, then the tie-breaks)."""
    if len(scores) < 2:
        return "sole_candidate"
    first, second = scores[0], scores[1]
    for evidence, mine, theirs in zip(_STANDING_EVIDENCE, _standing(first), _standing(second), strict=True):
        if mine != theirs:
            return evidence
    same_peers = (first.peer_score or 0.0) == (second.peer_score or 0.0)
    if first.score == second.score:
        if first.check_score != second.check_score:
            return "checks"
        return "council_order" if same_peers else "ballots"
    if same_peers:
        return "checks"
    return "ballots" if first.check_score == second.check_score else "score"


def no_winner_reason(scores: Sequence[ProposalScore]) -> str | None:
    """Why a ranked deliberation has no winner, or None if it has one."""
    if not scores or not _fails_required(scores[0]):
        return None
    failed = sorted({c.name for c in scores[0].checks if c.required and not c.passed})
    return f"no winner: every proposal fails a required check ({', '.join(failed)})"


def tie_break(scores: Sequence[ProposalScore]) -> str | None:
    """How first place was decided when others had the same score, or None."""
    if len(scores) < 2:
        return None
    first = scores[0]
    required = _fails_required(first)
    tied = [s for s in scores[1:] if s.score == first.score and _fails_required(s) == required]
    if not tied:
        return None
    names = ", ".join([first.agent_id, *(s.agent_id for s in tied)])
    runner_up = tied[0]
    both = f"{first.agent_id} {_tested_says(first)}; {runner_up.agent_id} {_tested_says(runner_up)}"
    how = _TIE_BROKEN_BY[decided_by([first, runner_up])].format(both=both)
    return f"tie at score {first.score:.2f} between {names}, broken by {how}"


# How `decided_by` reads where the two had the same score (neither fails a required check).
_TIE_BROKEN_BY: dict[DecidedBy, str] = {
    "user_tests": "the specification ({both})",
    "self_contradiction": "the specification ({both})",
    "independent_tests": "the independent testers ({both})",
    "members_tests": "the tests ({both})",
    "checks": "the better check score",
    "ballots": "the better peer score",
    "council_order": "council order (the earlier agent)",
}


def _tested_says(score: ProposalScore) -> str:
    members = _TESTED_SAYS[score.tested] if score.tested else "was not tested"
    specification = _specification_says(score)
    return f"{specification}, and {members}" if specification else members


def _fails_required(score: ProposalScore) -> bool:
    return any(c.required and not c.passed for c in score.checks)


def choose_winner(scores: Sequence[ProposalScore], candidates: Sequence[Candidate]) -> Winner | None:
    """The best proposal, or None when there is none or even the best fails a required check
    (a code task answered without code by everyone has no winner)."""
    if not scores or _fails_required(scores[0]):
        return None
    best = scores[0]
    content = next(c.content for c in candidates if c.agent_id == best.agent_id)
    checks = ", ".join(f"{c.name} {c.score:.2f}" for c in best.checks if c.applicable)
    peer = (
        f"peer score {best.peer_score:.2f} from {best.ballots} ballot(s)"
        if best.peer_score is not None
        else "no peer ballots"
    )
    reason = f"{best.agent_id} ({best.role}) ranks first with score {best.score:.2f}: {peer}; checks {checks}"
    evidence = decided_by(scores)
    if evidence != "sole_candidate":
        says = _DECIDED_SAYS[evidence].format(runner_up=scores[1].agent_id)
        reason += f"; decided over {scores[1].agent_id} by {says}"
    # Only the tests rank a proposal above a better score: say so, or the order looks wrong.
    outscored = [s for s in scores[1:] if s.score > best.score and not _fails_required(s)]
    if outscored:
        others = ", ".join(f"{s.agent_id} (score {s.score:.2f}, {_tested_says(s)})" for s in outscored)
        reason += f"; it {_tested_says(best)}, which ranks it above {others}"
    return Winner(
        agent_id=best.agent_id,
        role=best.role,
        score=best.score,
        version=best.version,
        content=content,
        reason=reason,
        decided_by=evidence,
        tie_break=tie_break(scores),
    )

"""The stages of a deliberation: proposals, peer-review rounds, the anonymized ranking and
the synthesis. Each stage runs all its model calls at once through the one CallRunner,
until the deliberation's deadline; a call that fails or runs late is recorded, never fatal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.council import (
    CHAIR_ID,
    agent_outcome,
    plan_call,
    plan_critiques,
    proposal_call,
    why_no_answer,
)
from agents.models import (
    AgentOutcome,
    AgentSpec,
    Ballot,
    DeliberationRequest,
    Stage,
    StageCall,
    Verdict,
)
from agents.prompts import critique_messages, ranking_messages, revision_messages, synthesis_messages
from agents.ranking import (
    Candidate,
    anonymize,
    ballot_from_answer,
    ballot_schema,
    choose_winner,
    no_winner_reason,
    score_candidates,
)
from flows.calls import CallRunner
from flows.execution import Execution

# Rankings should be reproducible judgements, not creative writing.
RANKING_TEMPERATURE = 0.2
SYNTHESIS_INPUTS = 3
MIN_PROPOSALS_TO_RANK = 3  # each reviewer ranks the others: with 2, every ballot is trivial


@dataclass
class Review:
    """The review rounds: every critique and revision, the latest version of each proposal,
    and what is missing."""

    calls: list[StageCall] = field(default_factory=list)
    latest: dict[str, Candidate] = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)


@dataclass
class Ranking:
    """The ranking calls, the ballots read from them, and what is missing."""

    calls: list[StageCall] = field(default_factory=list)
    ballots: list[Ballot] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)


def propose(
    runner: CallRunner,
    request: DeliberationRequest,
    agents: Sequence[AgentSpec],
    on_outcomes: Callable[[list[AgentOutcome]], Any],
) -> list[AgentOutcome]:
    """Every agent's proposal at once. Outcomes are handed to `on_outcomes` as soon as they
    are known (together when they finish together); agents unfinished at the deadline are
    timed_out. In council order."""
    by_id = {agent.agent_id: agent for agent in agents}
    calls = runner.run(
        [proposal_call(request, agent) for agent in agents],
        on_calls=lambda calls: on_outcomes([agent_outcome(by_id[call.agent_id], call) for call in calls]),
    )
    return [agent_outcome(agent, call) for agent, call in zip(agents, calls, strict=True)]


def candidates_of(outcomes: Sequence[AgentOutcome]) -> dict[str, Candidate]:
    """The original proposals, by author, in council order."""
    return {
        o.agent_id: Candidate(o.agent_id, o.role, 0, o.proposal.content, o.proposal.finish_reason)
        for o in outcomes
        if o.proposal is not None
    }


def _why(call: StageCall) -> str:
    return why_no_answer(call.status, call.error, call.content, call.finish_reason)


def review_rounds(
    runner: CallRunner,
    request: DeliberationRequest,
    authors: Sequence[AgentSpec],
    candidates: dict[str, Candidate],
    on_critiques: Callable[[list[StageCall]], Any],
) -> Review:
    """Each round: critiques by other agents (of other roles first), then a revision by each
    author that received any."""
    review = Review(latest=dict(candidates))
    pairs = plan_critiques(authors, request.critics)
    if request.rounds and not pairs:
        review.gaps.append("no peer review: it needs at least 2 proposals")
        return review
    by_id = {agent.agent_id: agent for agent in authors}
    for round_ in range(1, request.rounds + 1):
        if runner.deadline.expired:
            review.gaps.append(f"review rounds {round_}-{request.rounds} not run: {runner.deadline.reason()}")
            break
        critiques = runner.run(
            [
                plan_call(
                    request,
                    Stage.CRITIQUE,
                    critic.agent_id,
                    critique_messages(request, critic, review.latest[author.agent_id].content),
                    request.temperature,
                    round_,
                    subject_id=author.agent_id,
                )
                for critic, author in pairs
            ],
            on_calls=lambda calls: on_critiques([call for call in calls if call.ok]),
        )
        review.calls.extend(critiques)
        review.gaps.extend(f"critique {c.call_id}: {_why(c)}" for c in critiques if not c.ok)
        received: dict[str, list[str]] = {}
        for critique in critiques:
            if critique.ok and critique.subject_id is not None and critique.content:
                received.setdefault(critique.subject_id, []).append(critique.content)
        revisions = runner.run(
            [
                plan_call(
                    request,
                    Stage.REVISION,
                    author_id,
                    revision_messages(request, by_id[author_id], review.latest[author_id].content, texts),
                    by_id[author_id].temperature,
                    round_,
                    subject_id=author_id,
                )
                for author_id, texts in received.items()
            ]
        )
        review.calls.extend(revisions)
        for revision in revisions:
            text = (revision.content or "") if revision.ok else ""
            if text.strip() and revision.finish_reason != "length":
                before = review.latest[revision.agent_id]
                review.latest[revision.agent_id] = Candidate(
                    before.agent_id, before.role, round_, text, revision.finish_reason
                )
            else:
                review.gaps.append(
                    f"revision {revision.call_id}: {_why(revision)}; the previous version stands"
                )
    return review


def rank_proposals(
    runner: CallRunner,
    request: DeliberationRequest,
    authors: Sequence[AgentSpec],
    candidates: dict[str, Candidate],
) -> Ranking:
    """Every author ranks the others' latest proposals, shown under labels shuffled per
    reviewer, as a JSON ballot where its server can be held to the ballot's schema, else
    as text. Failed calls and unreadable rankings are abstentions."""
    if len(candidates) < MIN_PROPOSALS_TO_RANK:
        return Ranking(gaps=[f"no peer ranking: it needs at least {MIN_PROPOSALS_TO_RANK} proposals"])
    if runner.deadline.expired:
        return Ranking(gaps=[f"no peer ranking: {runner.deadline.reason()}"])
    labels = {a.agent_id: anonymize(runner.deliberation_id, a.agent_id, list(candidates)) for a in authors}

    def shown_to(reviewer: AgentSpec) -> dict[str, str]:
        return {name: candidates[agent_id].content for name, agent_id in labels[reviewer.agent_id].items()}

    # A JSON ballot where the reviewer's server can hold the answer to its schema.
    as_json = {a.agent_id: runner.endpoint_for(a.agent_id).constrains_json for a in authors}
    calls = runner.run(
        [
            plan_call(
                request,
                Stage.RANKING,
                reviewer.agent_id,
                ranking_messages(request, reviewer, shown_to(reviewer), as_json[reviewer.agent_id]),
                RANKING_TEMPERATURE,
                answer_schema=ballot_schema(list(labels[reviewer.agent_id]))
                if as_json[reviewer.agent_id]
                else None,
            )
            for reviewer in authors
        ]
    )
    ballots = [
        ballot_from_answer(
            call.agent_id, labels[call.agent_id], call.content, as_json[call.agent_id], call.model
        )
        if call.ok and call.content is not None
        else Ballot(
            reviewer_id=call.agent_id, labels=labels[call.agent_id], model=call.model, abstained=_why(call)
        )
        for call in calls
    ]
    gaps = [f"ranking by {b.reviewer_id} abstained: {b.abstained}" for b in ballots if b.abstained]
    gaps += [f"ranking by {b.reviewer_id}: {note}" for b in ballots for note in b.notes]
    return Ranking(calls, ballots, gaps)


def judge(
    request: DeliberationRequest, review: Review, ranking: Ranking, execution: Execution | None = None
) -> Verdict:
    """Scores from the ballots and the checks (with the tests run, if any), and the winner
    (or why there is none)."""
    finalists = list(review.latest.values())
    scores = score_candidates(
        finalists,
        ranking.ballots,
        request.constraints.requirements,
        request.code_expected,
        execution.checks if execution is not None else None,
        execution.tested if execution is not None else None,
    )
    gaps = review.gaps + ranking.gaps + (execution.gaps if execution is not None else [])
    if (why := no_winner_reason(scores)) is not None:
        gaps.append(why)
    return Verdict(
        reviews=review.calls,
        rankings=ranking.calls,
        ballots=ranking.ballots,
        scores=scores,
        winner=choose_winner(scores, finalists),
        incomplete=gaps,
    )


def synthesize(
    runner: CallRunner, request: DeliberationRequest, verdict: Verdict, candidates: dict[str, Candidate]
) -> Verdict:
    """One call that merges the best proposals, the winner first; the verdict with it."""
    if runner.deadline.expired:
        return verdict.model_copy(
            update={"incomplete": [*verdict.incomplete, f"no synthesis: {runner.deadline.reason()}"]}
        )
    best = [candidates[score.agent_id].content for score in verdict.scores[:SYNTHESIS_INPUTS]]
    [call] = runner.run(
        [
            plan_call(
                request, Stage.SYNTHESIS, CHAIR_ID, synthesis_messages(request, best), request.temperature
            )
        ]
    )
    gaps = [] if call.ok else [f"synthesis: {_why(call)}"]
    return verdict.model_copy(update={"synthesis": call, "incomplete": [*verdict.incomplete, *gaps]})

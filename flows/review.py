"""The stages after the proposals: peer-review rounds, the anonymized ranking and the
synthesis. Each stage submits all its model calls to Ray at once and gathers them until
the deliberation's deadline; a call that fails or runs late is recorded, never fatal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prefect.futures import PrefectFuture
from prefect.tasks import exponential_backoff
from prefect_ray.context import remote_options

from agents.council import CHAIR_ID, SYNTHESIS_ID, critique_id, plan_critiques, ranking_id, revision_id
from agents.llm import ChatCompletion, LLMEndpoint
from agents.models import (
    AgentOutcome,
    AgentSpec,
    AgentStatus,
    Ballot,
    DeliberationRequest,
    ErrorInfo,
    ProposalScore,
    Stage,
    StageCall,
)
from agents.prompts import critique_messages, ranking_messages, revision_messages, synthesis_messages
from agents.ranking import Candidate, anonymize, ballot_from_answer
from agents.settings import Settings
from flows.gathering import Deadline, collect, deadline_error, run_count, settle
from tasks.ask import ask_model

# Rankings should be reproducible judgements, not creative writing.
RANKING_TEMPERATURE = 0.2
SYNTHESIS_INPUTS = 3
MIN_PROPOSALS_TO_RANK = 3  # each reviewer ranks the others: with 2, every ballot is trivial


@dataclass(frozen=True, eq=False)
class PlannedCall:
    call_id: str
    stage: Stage
    agent_id: str
    messages: list[dict[str, str]]
    temperature: float
    round: int = 0
    subject_id: str | None = None

    def record(
        self,
        status: AgentStatus,
        attempts: int,
        reply: ChatCompletion | None = None,
        error: ErrorInfo | None = None,
    ) -> StageCall:
        call = StageCall(
            call_id=self.call_id,
            stage=self.stage,
            agent_id=self.agent_id,
            round=self.round,
            subject_id=self.subject_id,
            status=status,
            attempts=attempts,
            error=error,
        )
        if reply is not None:
            call = call.model_copy(
                update={
                    "content": reply.content,
                    "finish_reason": reply.finish_reason,
                    "prompt_tokens": reply.prompt_tokens or 0,
                    "completion_tokens": reply.completion_tokens or 0,
                    "latency_ms": reply.latency_ms,
                }
            )
        return call


class StageRunner:
    """Runs one stage's calls as `ask_model` task runs on Ray, within the deadline."""

    def __init__(
        self,
        deliberation_id: str,
        request: DeliberationRequest,
        endpoint: LLMEndpoint,
        settings: Settings,
        deadline: Deadline,
    ) -> None:
        self.deliberation_id = deliberation_id
        self.request = request
        self.endpoint = endpoint
        self.settings = settings
        self.deadline = deadline

    def run(
        self, planned: Sequence[PlannedCall], on_call: Callable[[StageCall], Any] | None = None
    ) -> list[StageCall]:
        if self.deadline.expired:
            return [
                plan.record(AgentStatus.TIMED_OUT, 0, error=deadline_error(self.deadline)) for plan in planned
            ]
        ask = ask_model.with_options(
            timeout_seconds=max(1.0, min(self.settings.attempt_timeout_seconds, self.deadline.remaining())),
            retries=self.settings.max_retries,
            retry_delay_seconds=exponential_backoff(self.settings.retry_backoff_seconds),
        )
        with remote_options(num_cpus=self.settings.agent_cpus):
            futures = {
                plan: ask.with_options(
                    task_run_name=plan.call_id, tags={"llm", f"stage:{plan.stage}"}
                ).submit(
                    deliberation_id=self.deliberation_id,
                    call_id=plan.call_id,
                    endpoint=self.endpoint,
                    messages=plan.messages,
                    temperature=plan.temperature,
                    max_tokens=self.request.max_tokens,
                    llm_limit=self.settings.llm_concurrency_limit or None,
                )
                for plan in planned
            }
        calls: dict[PlannedCall, StageCall] = {}

        def finished(plan: PlannedCall, future: PrefectFuture[Any]) -> None:
            status, reply, attempts, error = settle(future, ChatCompletion)
            calls[plan] = plan.record(status, attempts, reply, error)
            if on_call is not None:
                on_call(calls[plan])

        for plan in collect(futures, self.deadline, finished):
            calls[plan] = plan.record(
                AgentStatus.TIMED_OUT, run_count(futures[plan]), error=deadline_error(self.deadline)
            )
        return [calls[plan] for plan in planned]


def candidates_of(outcomes: Sequence[AgentOutcome]) -> dict[str, Candidate]:
    """The original proposals, by author, in council order."""
    return {
        o.agent_id: Candidate(o.agent_id, o.role, 0, o.proposal.content, o.proposal.finish_reason)
        for o in outcomes
        if o.proposal is not None
    }


def _why(call: StageCall) -> str:
    if call.error is not None:
        return f"{call.status} ({call.error.type}: {call.error.message})"
    if call.finish_reason == "length":
        return "truncated at the token limit"
    return "empty answer"


def review_rounds(
    runner: StageRunner,
    authors: Sequence[AgentSpec],
    candidates: dict[str, Candidate],
    on_critique: Callable[[StageCall], Any],
) -> tuple[list[StageCall], dict[str, Candidate], list[str]]:
    """Each round: critiques by other agents (of other roles first), then a revision by each
    author that received any. Returns every critique and revision, the latest version of
    each proposal and what is missing."""
    request = runner.request
    reviews: list[StageCall] = []
    gaps: list[str] = []
    latest = dict(candidates)
    pairs = plan_critiques(authors, request.critics)
    if request.rounds and not pairs:
        gaps.append("no peer review: it needs at least 2 proposals")
        return reviews, latest, gaps
    by_id = {agent.agent_id: agent for agent in authors}
    for round_ in range(1, request.rounds + 1):
        if runner.deadline.expired:
            gaps.append(f"review rounds {round_}-{request.rounds} not run: {runner.deadline.reason()}")
            break
        critiques = runner.run(
            [
                PlannedCall(
                    critique_id(critic.agent_id, round_, author.agent_id),
                    Stage.CRITIQUE,
                    critic.agent_id,
                    critique_messages(request, critic, latest[author.agent_id].content),
                    request.temperature,
                    round_,
                    author.agent_id,
                )
                for critic, author in pairs
            ],
            on_call=lambda call: on_critique(call) if call.ok else None,
        )
        reviews += critiques
        gaps += [f"critique {c.call_id}: {_why(c)}" for c in critiques if not c.ok]
        received: dict[str, list[str]] = {}
        for critique in critiques:
            if critique.ok and critique.subject_id is not None and critique.content:
                received.setdefault(critique.subject_id, []).append(critique.content)
        revisions = runner.run(
            [
                PlannedCall(
                    revision_id(author_id, round_),
                    Stage.REVISION,
                    author_id,
                    revision_messages(request, by_id[author_id], latest[author_id].content, texts),
                    by_id[author_id].temperature,
                    round_,
                    author_id,
                )
                for author_id, texts in received.items()
            ]
        )
        reviews += revisions
        for revision in revisions:
            text = (revision.content or "") if revision.ok else ""
            if text.strip() and revision.finish_reason != "length":
                before = latest[revision.agent_id]
                latest[revision.agent_id] = Candidate(
                    before.agent_id, before.role, round_, text, revision.finish_reason
                )
            else:
                gaps.append(f"revision {revision.call_id}: {_why(revision)}; the previous version stands")
    return reviews, latest, gaps


def rank_proposals(
    runner: StageRunner, authors: Sequence[AgentSpec], candidates: dict[str, Candidate]
) -> tuple[list[StageCall], list[Ballot], list[str]]:
    """Every author ranks the others' latest proposals, shown under labels shuffled per
    reviewer. Failed calls and unreadable rankings are abstentions."""
    if len(candidates) < MIN_PROPOSALS_TO_RANK:
        return [], [], [f"no peer ranking: it needs at least {MIN_PROPOSALS_TO_RANK} proposals"]
    if runner.deadline.expired:
        return [], [], [f"no peer ranking: {runner.deadline.reason()}"]
    labels = {a.agent_id: anonymize(runner.deliberation_id, a.agent_id, list(candidates)) for a in authors}

    def shown_to(reviewer: AgentSpec) -> dict[str, str]:
        return {name: candidates[agent_id].content for name, agent_id in labels[reviewer.agent_id].items()}

    calls = runner.run(
        [
            PlannedCall(
                ranking_id(reviewer.agent_id),
                Stage.RANKING,
                reviewer.agent_id,
                ranking_messages(runner.request, reviewer, shown_to(reviewer)),
                RANKING_TEMPERATURE,
            )
            for reviewer in authors
        ]
    )
    ballots = [
        ballot_from_answer(call.agent_id, labels[call.agent_id], call.content)
        if call.ok and call.content is not None
        else Ballot(reviewer_id=call.agent_id, labels=labels[call.agent_id], abstained=_why(call))
        for call in calls
    ]
    gaps = [f"ranking by {b.reviewer_id} abstained: {b.abstained}" for b in ballots if b.abstained]
    return calls, ballots, gaps


def synthesize(
    runner: StageRunner, scores: Sequence[ProposalScore], candidates: dict[str, Candidate]
) -> tuple[StageCall | None, list[str]]:
    """One call that merges the best proposals, the winner first."""
    if runner.deadline.expired:
        return None, [f"no synthesis: {runner.deadline.reason()}"]
    best = [candidates[score.agent_id].content for score in scores[:SYNTHESIS_INPUTS]]
    [call] = runner.run(
        [
            PlannedCall(
                SYNTHESIS_ID,
                Stage.SYNTHESIS,
                CHAIR_ID,
                synthesis_messages(runner.request, best),
                runner.request.temperature,
            )
        ]
    )
    return call, [] if call.ok else [f"synthesis: {_why(call)}"]

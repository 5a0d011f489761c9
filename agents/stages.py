"""The stages of a deliberation, as the domain sees them: proposals, peer-review rounds, the
anonymized ranking, the tests of the code (with --run-code), the verdict and the synthesis.

Each stage is a function of plain values and one port, `ask`: every call of the stage at
once, a record for each in the order given (a call that failed or ran late is a record,
never an exception). The stages look at the deliberation's one `Deadline` before they ask;
what it cuts short is recorded as missing. The flow supplies the port that runs the calls
as Prefect task runs on Ray (flows.calls.CallRunner); a unit test supplies a fake.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agents.calls import critique_call, proposal_call, ranking_call, revision_call, synthesis_call
from agents.conclusion import agent_outcome, why_no_answer
from agents.evidence import (
    SuiteRun,
    TestSuite,
    agreement,
    check_independent_tests,
    check_own_tests,
    check_stated_examples,
    check_tests_pass,
    check_user_tests,
    plan_suites,
    tested_standing,
)
from agents.examples import UserTests
from agents.models import (
    AgentOutcome,
    AgentSpec,
    AgentStatus,
    Ballot,
    CheckResult,
    DeliberationRequest,
    ModelCall,
    StageCall,
    Tested,
    Verdict,
)
from agents.planning import plan_critiques
from agents.proposal_form import as_text
from agents.ranking import (
    Candidate,
    anonymize,
    ballot_from_answer,
    choose_winner,
    no_winner_reason,
    score_candidates,
)

SYNTHESIS_INPUTS = 3
MIN_PROPOSALS_TO_RANK = 3  # each reviewer ranks the others: with 2, every ballot is trivial

OnCalls = Callable[[list[StageCall]], Any]


class Ask(Protocol):
    """The stages' one port to the models: every call's record, in the order given. Records
    are handed to `on_calls` as soon as they are known, several at once when they are known
    together; a call unfinished at the deadline is timed_out. Raises DeliberationCancelled
    if the deliberation is cancelled before or meanwhile."""

    def __call__(self, calls: Sequence[ModelCall], on_calls: OnCalls | None = None) -> list[StageCall]: ...


class Deadline(Protocol):
    """The deliberation's one deadline, as the stages look at it."""

    @property
    def expired(self) -> bool: ...

    def reason(self) -> str:
        """Why what it cut short did not run, in a few words."""
        ...

    def check(self) -> None:
        """Raise DeliberationCancelled if the deliberation was cancelled."""
        ...


class RunSuites(Protocol):
    """The tests' port: every suite run at once until the deadline, a run for each
    (`not_run`, saying why, for one that failed to run or ran late)."""

    @property
    def left_out(self) -> Sequence[str]:
        """The context's files the sandbox cannot hold (it has its own under those names)."""
        ...

    def __call__(self, suites: Mapping[str, TestSuite]) -> dict[str, SuiteRun]: ...


@dataclass(frozen=True)
class Ballots:
    """How the ballots are asked for: under labels shuffled per reviewer, seeded by `seed`
    (the deliberation's id, so a retried call sees the same prompt), and as JSON from the
    reviewers whose server can hold an answer to the ballot's schema (`as_json`)."""

    seed: str
    as_json: Mapping[str, bool]


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


@dataclass
class Execution:
    """The `tests_pass` check of each proposal, how the tests went for it, and what could
    not be run."""

    checks: dict[str, CheckResult] = field(default_factory=dict)
    tested: dict[str, Tested] = field(default_factory=dict)
    # By agent id: what ranks before the members' tests: the user's tests, whether its code
    # contradicts its own docstrings or its own author's tests, and the tests of members
    # without a solution (user_tests, own_examples, own_tests, independent_tests).
    specified: dict[str, list[CheckResult]] = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)
    runs: dict[str, SuiteRun] = field(default_factory=dict)


def propose(
    ask: Ask,
    request: DeliberationRequest,
    agents: Sequence[AgentSpec],
    on_outcomes: Callable[[list[AgentOutcome]], Any],
    as_json: Mapping[str, bool] | None = None,
) -> list[AgentOutcome]:
    """Every agent's proposal at once; on a code task, in a JSON form (explanation,
    solution, tests) from the agents whose server can hold an answer to it (`as_json`),
    rendered back to text. Outcomes are handed to `on_outcomes` as soon as they are known
    (together when they finish together); agents unfinished at the deadline are
    timed_out. In council order."""
    by_id = {agent.agent_id: agent for agent in agents}
    calls = ask(
        [proposal_call(request, agent, in_form(request, as_json, agent.agent_id)) for agent in agents],
        on_calls=lambda calls: on_outcomes([agent_outcome(by_id[call.agent_id], call) for call in calls]),
    )
    return [agent_outcome(agent, call) for agent, call in zip(agents, calls, strict=True)]


def in_form(request: DeliberationRequest, as_json: Mapping[str, bool] | None, agent_id: str) -> bool:
    """Whether an agent's proposal (and its revisions) are asked for in the JSON form: on a
    code task, where its server can hold an answer to a schema."""
    return request.code_expected and bool((as_json or {}).get(agent_id))


def authors_of(agents: Sequence[AgentSpec], outcomes: Sequence[AgentOutcome]) -> list[AgentSpec]:
    """The agents that made a proposal, in council order."""
    return [a for a, o in zip(agents, outcomes, strict=True) if o.status is AgentStatus.COMPLETED]


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
    ask: Ask,
    deadline: Deadline,
    request: DeliberationRequest,
    authors: Sequence[AgentSpec],
    candidates: dict[str, Candidate],
    on_critiques: Callable[[list[StageCall]], Any],
    as_json: Mapping[str, bool] | None = None,
) -> Review:
    """Each round: critiques by other agents (of other roles first), then a revision by each
    author that received any (in the JSON form where its proposal was, `in_form`)."""
    review = Review(latest=dict(candidates))
    pairs = plan_critiques(authors, request.critics)
    if request.rounds and not pairs:
        review.gaps.append("no peer review: it needs at least 2 proposals")
        return review
    by_id = {agent.agent_id: agent for agent in authors}
    for round_ in range(1, request.rounds + 1):
        if deadline.expired:
            review.gaps.append(f"review rounds {round_}-{request.rounds} not run: {deadline.reason()}")
            break
        critiques = ask(
            [
                critique_call(
                    request, critic, author.agent_id, review.latest[author.agent_id].content, round_
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
        revisions = ask(
            [
                revision_call(
                    request,
                    by_id[author_id],
                    review.latest[author_id].content,
                    texts,
                    round_,
                    in_form(request, as_json, author_id),
                )
                for author_id, texts in received.items()
            ]
        )
        revisions = [as_text(revision) for revision in revisions]
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
    ask: Ask,
    deadline: Deadline,
    request: DeliberationRequest,
    authors: Sequence[AgentSpec],
    candidates: dict[str, Candidate],
    ballots_asked: Ballots,
) -> Ranking:
    """Every author ranks the others' latest proposals, shown under labels shuffled per
    reviewer, as a JSON ballot where its server can be held to the ballot's schema, else as
    text. Failed calls and unreadable rankings are abstentions."""
    if len(candidates) < MIN_PROPOSALS_TO_RANK:
        return Ranking(gaps=[f"no peer ranking: it needs at least {MIN_PROPOSALS_TO_RANK} proposals"])
    if deadline.expired:
        return Ranking(gaps=[f"no peer ranking: {deadline.reason()}"])
    labels = {a.agent_id: anonymize(ballots_asked.seed, a.agent_id, list(candidates)) for a in authors}
    as_json = ballots_asked.as_json

    def shown_to(reviewer: AgentSpec) -> dict[str, str]:
        return {name: candidates[agent_id].content for name, agent_id in labels[reviewer.agent_id].items()}

    calls = ask(
        [
            ranking_call(request, reviewer, shown_to(reviewer), as_json[reviewer.agent_id])
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


def execute_proposals(
    run_suites: RunSuites,
    deadline: Deadline,
    request: DeliberationRequest,
    candidates: Mapping[str, Candidate],
) -> Execution:
    """Every proposal with Python code run against the tests the other members wrote, each
    test weighed by how far the solutions agree with it; the testers' (members with no
    solution) counted apart; its own author's and docstrings' against it; and the user's
    own (agents/evidence.py, agents/examples.py)."""
    deadline.check()
    user = UserTests(request)
    proposals = {agent_id: candidate.content for agent_id, candidate in candidates.items()}
    suites = plan_suites(proposals, user)
    runnable = {agent_id: suite for agent_id, suite in suites.items() if suite.runnable}
    execution = Execution()
    if run_suites.left_out:
        execution.gaps.append(
            "--run-code: context files left out of the sandbox, which has its own under those names: "
            + ", ".join(run_suites.left_out)
        )
    if runnable and not deadline.expired:
        runs = run_suites(runnable)
    else:
        runs = {
            agent_id: SuiteRun(candidate_id=agent_id, outcome="not_run", detail=deadline.reason())
            for agent_id in runnable
        }
    agreed = agreement(runs.values())
    execution.runs = dict(runs)
    has_testers = any(suite.testers for suite in suites.values())
    for agent_id in candidates:
        check = check_tests_pass(suites[agent_id], runs.get(agent_id), request.code_expected, agreed)
        execution.checks[agent_id] = check
        execution.tested[agent_id] = tested_standing(check, suites[agent_id], runs.get(agent_id), agreed)
        run = runs.get(agent_id)
        said = [
            check_user_tests(suites[agent_id], run, user),
            check_stated_examples(suites[agent_id], run),
            check_own_tests(suites[agent_id], run, agreed),
            check_independent_tests(suites[agent_id], run, agreed, request.code_expected, has_testers),
        ]
        if checks := [check for check in said if check is not None]:
            execution.specified[agent_id] = checks
        if agent_id in runs and runs[agent_id].outcome == "not_run":
            execution.gaps.append(f"tests of {agent_id}: {check.detail}")
    return execution


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
        execution.specified if execution is not None else None,
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
    ask: Ask,
    deadline: Deadline,
    request: DeliberationRequest,
    verdict: Verdict,
    candidates: dict[str, Candidate],
) -> Verdict:
    """One call that merges the best proposals, the winner first; the verdict with it."""
    if deadline.expired:
        return verdict.model_copy(
            update={"incomplete": [*verdict.incomplete, f"no synthesis: {deadline.reason()}"]}
        )
    best = [candidates[score.agent_id].content for score in verdict.scores[:SYNTHESIS_INPUTS]]
    [call] = ask([synthesis_call(request, best)])
    gaps = [] if call.ok else [f"synthesis: {_why(call)}"]
    return verdict.model_copy(update={"synthesis": call, "incomplete": [*verdict.incomplete, *gaps]})

"""The stages as domain code, each run with a fake `ask` port: no servers, milliseconds each."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from agents.calls import finished_call
from agents.errors import DeliberationCancelled
from agents.evidence import SuiteRun, TestSuite
from agents.models import (
    CHAIR_ID,
    AgentOutcome,
    AgentStatus,
    ChatCompletion,
    DeliberationRequest,
    ErrorInfo,
    ModelCall,
    Stage,
    StageCall,
)
from agents.planning import plan_council
from agents.stages import (
    Ballots,
    Ranking,
    Review,
    authors_of,
    candidates_of,
    execute_proposals,
    judge,
    propose,
    rank_proposals,
    review_rounds,
    synthesize,
)

Answer = Callable[[ModelCall], "str | ErrorInfo"]


@dataclass
class FakeDeadline:
    """A deadline the test expires (or cancels) at the moment it chooses."""

    expired: bool = False
    cancelled: str | None = None

    def reason(self) -> str:
        return "deadline of 5 s reached"

    def check(self) -> None:
        if self.cancelled is not None:
            raise DeliberationCancelled(self.cancelled)


@dataclass
class FakeModels:
    """The stages' `ask` port: each call answered by `answer` (text, or the error that ended
    it), and timed_out once the deadline has expired, as flows.calls.CallRunner does."""

    answer: Answer
    deadline: FakeDeadline = field(default_factory=FakeDeadline)
    asked: list[list[ModelCall]] = field(default_factory=list)
    after_ask: Callable[[], None] | None = None

    def __call__(
        self, calls: Sequence[ModelCall], on_calls: Callable[[list[StageCall]], object] | None = None
    ) -> list[StageCall]:
        self.deadline.check()
        self.asked.append(list(calls))
        records = [self._record(call) for call in calls]
        if on_calls is not None:
            on_calls(records)
        if self.after_ask is not None:
            self.after_ask()
        return records

    def _record(self, call: ModelCall) -> StageCall:
        if self.deadline.expired:
            error = ErrorInfo(type="DeadlineExceeded", message="late", retryable=False)
            return finished_call(call, AgentStatus.TIMED_OUT, 0, error=error)
        answer = self.answer(call)
        if isinstance(answer, ErrorInfo):
            return finished_call(call, AgentStatus.FAILED, 3, error=answer)
        reply = ChatCompletion(
            content=answer,
            finish_reason="stop",
            prompt_tokens=5,
            completion_tokens=7,
            model="m",
            latency_ms=1,
        )
        return finished_call(call, AgentStatus.COMPLETED, 1, reply)

    def calls_of(self, stage: Stage) -> list[ModelCall]:
        return [call for batch in self.asked for call in batch if call.stage is stage]


def request(**fields: object) -> DeliberationRequest:
    defaults: dict[str, object] = {
        "task": "Add rate limiting to the login endpoint",
        "roles": ["DEV", "QA", "ARCHITECT"],
    }
    return DeliberationRequest.model_validate(defaults | fields)


def shown_proposals(call: ModelCall) -> dict[str, str]:
    """Label -> text of the proposals a ranking call shows."""
    text = call.messages[-1]["content"]
    return dict(re.findall(r"Proposal (\w+):\n(.*?)(?:\n\n|$)", text))


def rank_by_quality(call: ModelCall) -> str:
    """A reviewer that ranks the proposals it is shown by the `quality N` they state."""
    shown = shown_proposals(call)
    best_first = sorted(shown, key=lambda name: -int(re.findall(r"quality (\d+)", shown[name])[0]))
    return "Fine work.\nFINAL RANKING:\n" + "\n".join(
        f"{i}. Proposal {n}" for i, n in enumerate(best_first, 1)
    )


QUALITY = {"agent-dev-001": 3, "agent-qa-001": 1, "agent-architect-001": 2}


def council_answers(call: ModelCall) -> str | ErrorInfo:
    if call.stage is Stage.PROPOSAL:
        return f"proposal by {call.agent_id}, quality {QUALITY[call.agent_id]}"
    if call.stage is Stage.CRITIQUE:
        return f"critique by {call.agent_id}"
    if call.stage is Stage.REVISION:
        return f"revised by {call.agent_id} r{call.round}, quality {QUALITY[call.agent_id]}"
    if call.stage is Stage.RANKING:
        return rank_by_quality(call)
    return "the merged proposal"


def proposed(models: FakeModels, asked: DeliberationRequest) -> tuple[list[AgentOutcome], list[AgentOutcome]]:
    """The proposal stage's outcomes, and those handed on as they were known."""
    handed: list[AgentOutcome] = []
    return propose(models, asked, plan_council(asked), handed.extend), handed


# Proposals


def test_every_agent_proposes_once_and_outcomes_come_in_council_order() -> None:
    def answers(call: ModelCall) -> str | ErrorInfo:
        if call.agent_id == "agent-qa-001":
            return ErrorInfo(type="LLMRejected", message="400", retryable=False)
        return council_answers(call)

    models = FakeModels(answers)
    outcomes, handed = proposed(models, request())
    assert len(models.asked) == 1
    assert [c.call_id for c in models.asked[0]] == ["agent-dev-001", "agent-qa-001", "agent-architect-001"]
    assert [o.agent_id for o in outcomes] == ["agent-dev-001", "agent-qa-001", "agent-architect-001"]
    assert [o.status for o in outcomes] == [AgentStatus.COMPLETED, AgentStatus.FAILED, AgentStatus.COMPLETED]
    assert handed == outcomes  # every outcome handed on, none twice
    assert outcomes[0].proposal is not None and outcomes[0].proposal.content.startswith(
        "proposal by agent-dev"
    )
    assert outcomes[1].proposal is None and outcomes[1].error is not None
    assert [a.agent_id for a in authors_of(plan_council(request()), outcomes)] == [
        "agent-dev-001",
        "agent-architect-001",
    ]


def test_a_second_agent_of_a_role_runs_hotter_and_is_told_to_diverge() -> None:
    asked = request(roles=["DEV"], agents_per_role=2, temperature=0.5)
    models = FakeModels(lambda call: f"proposal by {call.agent_id}, quality 1")
    proposed(models, asked)
    first, second = models.calls_of(Stage.PROPOSAL)
    assert (first.temperature, second.temperature) == (0.5, 0.65)
    assert first.messages[-1]["content"] != second.messages[-1]["content"]


def test_on_a_code_task_a_proposal_is_asked_in_a_json_form_where_the_server_can_and_read_as_text() -> None:
    form = {
        "explanation": "Recursion.",
        "solution": "def f(n):\n    return n",
        "tests": "def test_f():\n    assert f(1) == 1",
    }

    def answers(call: ModelCall) -> str | ErrorInfo:
        return json.dumps(form) if call.answer_schema is not None else f"prose by {call.agent_id}"

    asked = request(task="Write a Python function f", expects="code")
    models = FakeModels(answers)
    json_servers = {"agent-dev-001": True, "agent-qa-001": False, "agent-architect-001": True}
    outcomes = propose(models, asked, plan_council(asked), lambda _: None, json_servers)
    dev, qa, _ = models.calls_of(Stage.PROPOSAL)
    assert dev.answer_schema is not None and set(dev.answer_schema["required"]) == {
        "explanation",
        "solution",
        "tests",
    }
    assert '"solution"' in dev.messages[-1]["content"] and qa.answer_schema is None
    assert outcomes[0].proposal is not None and outcomes[0].proposal.content == (
        "Recursion.\n\n```python\ndef f(n):\n    return n\n```\n\n"
        "Tests:\n\n```python\ndef test_f():\n    assert f(1) == 1\n```"
    )
    assert outcomes[1].proposal is not None and outcomes[1].proposal.content == "prose by agent-qa-001"
    # Its revisions are asked in the form too, and read as text.
    review = review_rounds(
        models,
        models.deadline,
        asked,
        authors_of(plan_council(asked), outcomes),
        candidates_of(outcomes),
        lambda _: None,
        json_servers,
    )
    revisions = {call.agent_id: call for call in models.calls_of(Stage.REVISION)}
    assert (
        revisions["agent-dev-001"].answer_schema is not None
        and revisions["agent-qa-001"].answer_schema is None
    )
    assert review.latest["agent-dev-001"].content == outcomes[0].proposal.content
    assert review.latest["agent-qa-001"].content == "prose by agent-qa-001"
    # Not a code task: text, whatever the server can do.
    models = FakeModels(answers)
    propose(models, request(expects="any"), plan_council(request()), lambda _: None, json_servers)
    assert all(call.answer_schema is None for call in models.calls_of(Stage.PROPOSAL))


# Review rounds


def review(models: FakeModels, asked: DeliberationRequest) -> tuple[Review, list[StageCall]]:
    outcomes, _ = proposed(models, asked)
    council = plan_council(asked)
    published: list[StageCall] = []
    done = review_rounds(
        models,
        models.deadline,
        asked,
        authors_of(council, outcomes),
        candidates_of(outcomes),
        published.extend,
    )
    return done, published


def test_each_author_is_critiqued_by_others_of_another_role_then_revises_with_what_it_received() -> None:
    asked = request(roles=["DEV", "QA"], agents_per_role=2, rounds=1, critics=2)
    models = FakeModels(council_answers_any)
    done, published = review(models, asked)
    critiques = models.calls_of(Stage.CRITIQUE)
    by_author = Counter(call.subject_id for call in critiques)
    assert set(by_author.values()) == {2}  # every author gets exactly `critics` critiques
    assert all(call.agent_id != call.subject_id for call in critiques)
    roles = {agent.agent_id: agent.role for agent in plan_council(asked)}
    # Two of another role are there for each author: both critics are of the other role.
    assert all(roles[call.agent_id] != roles[call.subject_id or ""] for call in critiques)
    assert Counter(call.agent_id for call in critiques) == Counter({a: 2 for a in roles})  # spread evenly
    assert [c.call_id for c in published] == [c.call_id for c in critiques]  # each critique published
    revisions = models.calls_of(Stage.REVISION)
    assert sorted(call.agent_id for call in revisions) == sorted(roles)
    for call in revisions:
        prompt = call.messages[-1]["content"]
        critics = [c.agent_id for c in critiques if c.subject_id == call.agent_id]
        assert all(f"critique by {critic}" in prompt for critic in critics)
    assert {agent_id: c.version for agent_id, c in done.latest.items()} == {a: 1 for a in roles}
    assert done.gaps == []


def council_answers_any(call: ModelCall) -> str | ErrorInfo:
    """Proposals of any council, each quality 1."""
    if call.stage in (Stage.PROPOSAL, Stage.REVISION):
        return f"{call.stage} by {call.agent_id} r{call.round}, quality 1"
    return council_answers(call)


def test_a_failed_or_cut_revision_keeps_the_previous_version_and_says_so() -> None:
    def answers(call: ModelCall) -> str | ErrorInfo:
        if call.stage is Stage.REVISION and call.agent_id == "agent-qa-001":
            return ErrorInfo(type="LLMUnavailable", message="503", retryable=True)
        return council_answers(call)

    done, _ = review(FakeModels(answers), request(rounds=2))
    assert done.latest["agent-qa-001"].version == 0
    assert done.latest["agent-qa-001"].content.startswith("proposal by agent-qa-001")
    assert done.latest["agent-dev-001"].version == 2
    assert [g for g in done.gaps if "revision" in g] == [
        "revision agent-qa-001.revision.r1: failed (LLMUnavailable: 503); the previous version stands",
        "revision agent-qa-001.revision.r2: failed (LLMUnavailable: 503); the previous version stands",
    ]


def test_no_review_with_a_single_proposal() -> None:
    done, published = review(FakeModels(council_answers_any), request(roles=["DEV"], rounds=1))
    assert done.gaps == ["no peer review: it needs at least 2 proposals"]
    assert done.calls == [] and published == []


def test_the_deadline_expiring_mid_stage_times_out_its_calls_and_skips_the_rounds_after() -> None:
    models = FakeModels(council_answers)
    asked = request(rounds=3)
    # The deadline passes once the first round's critiques are answered.
    models.after_ask = lambda: setattr(models.deadline, "expired", len(models.asked) >= 2)
    done, _ = review(models, asked)
    revisions = [c for c in done.calls if c.stage is Stage.REVISION]
    assert revisions and all(c.status is AgentStatus.TIMED_OUT for c in revisions)
    assert all(candidate.version == 0 for candidate in done.latest.values())
    assert done.gaps[-1] == "review rounds 2-3 not run: deadline of 5 s reached"
    assert not [call for call in models.calls_of(Stage.CRITIQUE) if call.round > 1]


def test_a_cancelled_deliberation_stops_the_stage_where_it_is() -> None:
    models = FakeModels(council_answers)
    outcomes, _ = proposed(models, request(rounds=1))
    models.deadline.cancelled = "cancelled from the UI"
    council = plan_council(request(rounds=1))
    with pytest.raises(DeliberationCancelled, match="cancelled from the UI"):
        review_rounds(
            models, models.deadline, request(rounds=1), council, candidates_of(outcomes), lambda calls: None
        )


# Ranking


def ranked(
    answers: Answer, asked: DeliberationRequest | None = None, as_json: Mapping[str, bool] | None = None
) -> tuple[FakeModels, Ranking, Review]:
    asked = asked or request(rounds=0)
    models = FakeModels(answers)
    outcomes, _ = proposed(models, asked)
    council = plan_council(asked)
    authors = authors_of(council, outcomes)
    latest = Review(latest=candidates_of(outcomes))
    ballots = Ballots(seed="d1", as_json=as_json or {a.agent_id: False for a in council})
    ranking = rank_proposals(models, models.deadline, asked, authors, latest.latest, ballots)
    return models, ranking, latest


def test_every_author_ranks_the_others_under_labels_shuffled_per_reviewer() -> None:
    models, ranking, _ = ranked(council_answers)
    calls = models.calls_of(Stage.RANKING)
    assert [c.agent_id for c in calls] == ["agent-dev-001", "agent-qa-001", "agent-architect-001"]
    for call, ballot in zip(calls, ranking.ballots, strict=True):
        shown = shown_proposals(call)
        assert len(shown) == 2 and call.agent_id not in ballot.labels.values()  # never its own
        assert all(f"by {call.agent_id}" not in text for text in shown.values())
        assert all("agent-" not in name for name in shown)  # anonymous labels
        assert call.temperature == 0.2 and call.answer_schema is None
    assert [b.order for b in ranking.ballots] == [
        ["agent-architect-001", "agent-qa-001"],
        ["agent-dev-001", "agent-architect-001"],
        ["agent-dev-001", "agent-qa-001"],
    ]
    assert ranking.gaps == []
    # Seeded: the same deliberation shows each reviewer the same labels again.
    _, again, _ = ranked(council_answers)
    assert [b.labels for b in again.ballots] == [b.labels for b in ranking.ballots]


def test_unreadable_failed_and_repeating_ballots() -> None:
    def answers(call: ModelCall) -> str | ErrorInfo:
        if call.stage is not Stage.RANKING:
            return council_answers(call)
        if call.agent_id == "agent-dev-001":
            return "I like them all."
        if call.agent_id == "agent-qa-001":
            return ErrorInfo(type="LLMTimeout", message="read timed out", retryable=True)
        first = next(iter(shown_proposals(call)))
        return f"FINAL RANKING:\n1. Proposal {first}\n2. Proposal {first}"

    _, ranking, _ = ranked(answers)
    dev, qa, architect = ranking.ballots
    assert dev.abstained is not None and dev.abstained.startswith("malformed ranking")
    assert qa.abstained == "failed (LLMTimeout: read timed out)"
    assert architect.abstained is None and len(architect.order) == 1
    assert any("ranked again: the first place given stands" in note for note in architect.notes)
    assert ranking.gaps[:2] == [
        f"ranking by agent-dev-001 abstained: {dev.abstained}",
        "ranking by agent-qa-001 abstained: failed (LLMTimeout: read timed out)",
    ]
    assert any(gap.startswith("ranking by agent-architect-001: ") for gap in ranking.gaps)


def test_ballots_are_held_to_a_json_schema_where_the_reviewers_server_can() -> None:
    def answers(call: ModelCall) -> str | ErrorInfo:
        if call.stage is Stage.RANKING and call.answer_schema is not None:
            names = list(shown_proposals(call))
            return json.dumps({"ranking": names[::-1], "reasons": {}})
        return council_answers(call)

    models, ranking, _ = ranked(
        answers, as_json={"agent-dev-001": True, "agent-qa-001": False, "agent-architect-001": False}
    )
    dev, qa, _ = models.calls_of(Stage.RANKING)
    assert dev.answer_schema is not None and qa.answer_schema is None
    assert ranking.ballots[0].abstained is None and len(ranking.ballots[0].order) == 2


def test_no_ranking_with_fewer_than_three_proposals_or_after_the_deadline() -> None:
    models, ranking, _ = ranked(council_answers, request(roles=["DEV", "QA"]))
    assert ranking.gaps == ["no peer ranking: it needs at least 3 proposals"]
    assert models.calls_of(Stage.RANKING) == []

    models = FakeModels(council_answers)
    outcomes, _ = proposed(models, request())
    models.deadline.expired = True
    late = rank_proposals(
        models,
        models.deadline,
        request(),
        plan_council(request()),
        candidates_of(outcomes),
        Ballots("d1", {}),
    )
    assert late.gaps == ["no peer ranking: deadline of 5 s reached"] and late.calls == []


# Judging


def test_the_ballots_choose_the_winner() -> None:
    _, ranking, latest = ranked(council_answers)
    verdict = judge(request(), latest, ranking)
    assert [s.agent_id for s in verdict.scores] == ["agent-dev-001", "agent-architect-001", "agent-qa-001"]
    assert verdict.winner is not None and verdict.winner.agent_id == "agent-dev-001"
    assert verdict.ballots == ranking.ballots and verdict.rankings == ranking.calls


def test_when_every_ballot_abstains_the_verdict_still_names_a_winner_and_says_why() -> None:
    def answers(call: ModelCall) -> str | ErrorInfo:
        return "no ranking here" if call.stage is Stage.RANKING else council_answers(call)

    _, ranking, latest = ranked(answers)
    verdict = judge(request(), latest, ranking)
    assert all(b.abstained for b in verdict.ballots)
    assert len([g for g in verdict.incomplete if "abstained" in g]) == 3
    assert verdict.winner is not None and verdict.winner.reason


CODE = "```python\ndef double(x):\n    return {body}\n```\n"
TESTS = (
    "```python\nfrom solution import double\n\n\ndef test_two():\n    assert double(2) == 4\n\n\n"
    "def test_zero():\n    assert double(0) == 0\n```\n"
)


@dataclass
class FakeSandbox:
    """The tests' port: each suite 'run' by evaluating the candidate's `double` on the two
    tests QA wrote, as the sandbox would report it."""

    left_out: Sequence[str] = ()
    ran: list[str] = field(default_factory=list)

    def __call__(self, suites: Mapping[str, TestSuite]) -> dict[str, SuiteRun]:
        runs = {}
        for agent_id, suite in suites.items():
            self.ran.append(agent_id)
            namespace: dict[str, object] = {}
            exec(suite.solution, namespace)  # noqa: S102 - the test's own fixed code
            double = namespace["double"]
            assert callable(double)
            results = {"test_two": double(2) == 4, "test_zero": double(0) == 0}
            authors = {author: results for author in suite.tests}
            runs[agent_id] = SuiteRun(
                candidate_id=agent_id,
                outcome="finished",
                passed={a: sum(r.values()) for a, r in authors.items()},
                failed={a: len(r) - sum(r.values()) for a, r in authors.items()},
                results=authors,
            )
        return runs


def code_answers(call: ModelCall) -> str | ErrorInfo:
    proposals = {
        "agent-dev-001": CODE.format(body="x + x") + "quality 1",  # right
        "agent-devops-001": CODE.format(body="x + 2") + "quality 3",  # wrong at 0
        "agent-qa-001": TESTS + "quality 2",
    }
    if call.stage is Stage.PROPOSAL:
        return proposals[call.agent_id]
    return rank_by_quality(call)


def test_tested_code_ranks_above_untested_above_failed_whatever_the_ballots_say() -> None:
    asked = request(roles=["DEV", "QA", "DEVOPS"], run_code=True, expects="code")
    models, ranking, latest = ranked(code_answers, asked)
    sandbox = FakeSandbox()
    execution = execute_proposals(sandbox, models.deadline, asked, latest.latest)
    assert sorted(sandbox.ran) == ["agent-dev-001", "agent-devops-001"]  # QA has no solution
    assert execution.checks["agent-dev-001"].score == 1.0
    assert execution.checks["agent-devops-001"].score < 1.0
    verdict = judge(asked, latest, ranking, execution)
    # DEVOPS got the ballots (quality 3), but its code fails QA's tests.
    assert verdict.winner is not None and verdict.winner.agent_id == "agent-dev-001"
    assert [s.agent_id for s in verdict.scores][-1] != "agent-dev-001"


def test_no_tests_run_after_the_deadline_and_the_sandbox_says_what_it_left_out() -> None:
    asked = request(roles=["DEV", "QA", "DEVOPS"], run_code=True, expects="code")
    models, _, latest = ranked(code_answers, asked)
    models.deadline.expired = True
    sandbox = FakeSandbox(left_out=["conftest.py"])
    execution = execute_proposals(sandbox, models.deadline, asked, latest.latest)
    assert sandbox.ran == []
    assert execution.gaps[0] == (
        "--run-code: context files left out of the sandbox, which has its own under those names: conftest.py"
    )
    assert "tests of agent-dev-001: not run: deadline of 5 s reached" in execution.gaps


# Synthesis


def test_the_chair_merges_the_best_three_winner_first() -> None:
    asked = request(roles=["DEV", "QA", "ARCHITECT", "DEVOPS"], synthesize=True)
    quality = QUALITY | {"agent-devops-001": 0}

    def answers(call: ModelCall) -> str | ErrorInfo:
        if call.stage is Stage.PROPOSAL:
            return f"proposal by {call.agent_id}, quality {quality[call.agent_id]}"
        return council_answers(call)

    models, ranking, latest = ranked(answers, asked)
    verdict = synthesize(models, models.deadline, asked, judge(asked, latest, ranking), latest.latest)
    [call] = models.calls_of(Stage.SYNTHESIS)
    assert call.agent_id == CHAIR_ID
    prompt = call.messages[-1]["content"]
    order = [
        prompt.index(f"proposal by {a}") for a in ("agent-dev-001", "agent-architect-001", "agent-qa-001")
    ]
    assert order == sorted(order) and "agent-devops-001" not in prompt
    assert verdict.synthesis is not None and verdict.synthesis.content == "the merged proposal"


def test_no_synthesis_after_the_deadline_and_a_failed_one_is_said() -> None:
    asked = request(synthesize=True)
    models, ranking, latest = ranked(council_answers, asked)
    verdict = judge(asked, latest, ranking)
    models.deadline.expired = True
    late = synthesize(models, models.deadline, asked, verdict, latest.latest)
    assert late.synthesis is None and late.incomplete[-1] == "no synthesis: deadline of 5 s reached"
    assert models.calls_of(Stage.SYNTHESIS) == []

    models.deadline.expired = False
    models.answer = lambda call: ErrorInfo(type="LLMRejected", message="400", retryable=False)
    failed = synthesize(models, models.deadline, asked, verdict, latest.latest)
    assert failed.incomplete[-1] == "synthesis: failed (LLMRejected: 400)"

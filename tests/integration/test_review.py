"""Review, ranking, checks and the winner, end to end on real Ray, Prefect, nats-server and
an OpenAI-compatible server whose answers are scripted per role and stage, so the winner
is known in advance."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from agents.adapters.nats import EventBus
from agents.events import (
    DELIBERATION_COMPLETED,
    DELIBERATION_RANKED,
    DELIBERATION_REVIEW_COMPLETED,
    AgentResponseEvent,
    DeliberationEvent,
    Event,
    RankedEvent,
    ReviewEvent,
)
from agents.models import AgentStatus, DeliberationRequest, DeliberationResult, Stage
from agents.settings import bus_config_for
from flows.deliberate import deliberate
from tests.fake_llm import HANG, FakeLLMServer, ok

pytestmark = pytest.mark.usefixtures("pipeline")

# The DEV proposal is the best on the evidence: its code parses and it addresses the
# requirement. QA's code does not parse; ARCHITECT ignores the requirement.
PROPOSALS = {
    "agent-dev-001": "WINNER. Limit requests per client IP with a token bucket.\n"
    "```python\ndef allow(ip: str) -> bool:\n    return True\n```\n",
    "agent-qa-001": "Limit requests per client IP; test it.\n```python\ndef test(:\n```\n",
    "agent-architect-001": "Put a gateway in front of the service.",
}
SHOWN = re.compile(
    r"^Proposal ([A-Z]{1,2}):\n(.*?)(?=\n\nProposal [A-Z]{1,2}:\n|\n\nBriefly assess)", re.M | re.S
)


def quality(text: str) -> int:
    return 0 if "WINNER" in text else 1 if "test it" in text else 2


def scripted(body: dict[str, Any]) -> str | None:
    """Answers like a council that can tell good from bad, by content only (it never
    learns who wrote what)."""
    user, prompt = body["user"], body["messages"][-1]["content"]
    if user in PROPOSALS:
        return PROPOSALS[user]
    if ".critique." in user:
        return f"Critique from {user.split('.')[0]}: add tests for the limiter."
    if ".revision." in user:
        original = prompt.split("<proposal>\n", 1)[1].split("\n</proposal>", 1)[0]
        return original + "\nRevised: tests added."
    if user == "agent-architect-001.ranking":
        return "They are all fine."  # no FINAL RANKING: an abstention
    if user.endswith(".ranking"):
        shown = dict((name, text) for name, text in SHOWN.findall(prompt))
        best_first = sorted(shown, key=lambda name: quality(shown[name]))
        return "Assessed.\nFINAL RANKING:\n" + "\n".join(
            f"{i}. Proposal {n}" for i, n in enumerate(best_first, 1)
        )
    if user == "chair.synthesis":
        return "Merged: token bucket per client IP, with tests."
    return None


def _artifacts(flow_run_id: Any) -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {artifact.type: artifact for artifact in found}


def test_scripted_council_picks_the_known_winner_and_publishes_every_stage(
    pipeline: FakeLLMServer, nats_url: str, read_events: Callable[[str], list[Event]]
) -> None:
    pipeline.responder = scripted
    # ARCHITECT is cut off at the token limit, and so is its revision, which is dropped.
    pipeline.script("agent-architect-001", ok(PROPOSALS["agent-architect-001"], finish_reason="length"))
    pipeline.script("agent-architect-001.revision.r1", ok("Revised, but cut", finish_reason="length"))
    request = DeliberationRequest(
        task="Add rate limiting to the login endpoint",
        roles=["DEV", "QA", "ARCHITECT"],
        constraints={"requirements": ["Limit requests per client IP"]},
        rounds=1,
        critics=1,
        synthesize=True,
        deliberation_id=uuid.uuid4().hex,
    )
    state = deliberate(request=request, return_state=True)
    result = state.result()
    assert state.is_completed() and isinstance(result, DeliberationResult)

    # Every proposal was critiqued once, by another role, and revised by its author.
    critiques = [c for c in result.reviews if c.stage is Stage.CRITIQUE]
    revisions = [c for c in result.reviews if c.stage is Stage.REVISION]
    assert sorted(c.subject_id for c in critiques) == sorted(PROPOSALS)
    assert all(c.ok and c.agent_id != c.subject_id for c in critiques)
    assert {r.agent_id for r in revisions if r.ok} == set(PROPOSALS)
    assert (
        "revision agent-architect-001.revision.r1: truncated at the token limit; the previous version stands"
        in result.incomplete
    )
    # The original is kept next to the revision, and the revision is what was ranked.
    dev = next(o for o in result.outcomes if o.agent_id == "agent-dev-001")
    assert dev.proposal is not None and dev.proposal.content == PROPOSALS["agent-dev-001"]

    # Rankings: the reviewers never saw an author; the one without a ranking abstained.
    for call in result.rankings:
        prompt = next(c.body for c in pipeline.calls if c.agent == call.call_id)["messages"][-1]["content"]
        assert not any(agent in prompt for agent in PROPOSALS)
    abstained = {b.reviewer_id: b.abstained for b in result.ballots}
    assert abstained["agent-architect-001"] == "malformed ranking: no FINAL RANKING section"
    assert abstained["agent-dev-001"] is None and abstained["agent-qa-001"] is None
    assert "ranking by agent-architect-001 abstained: malformed ranking: no FINAL RANKING section" in (
        result.incomplete
    )

    # The winner is the proposal the evidence favours, in its revised version.
    assert [s.agent_id for s in result.scores] == ["agent-dev-001", "agent-qa-001", "agent-architect-001"]
    winner = result.winner
    assert winner is not None and winner.agent_id == "agent-dev-001" and winner.version == 1
    assert winner.content.endswith("Revised: tests added.") and winner.tie_break is None
    checks = {c.name: c for c in result.scores[1].checks}
    assert not checks["code_parses"].passed  # QA's code
    architect = result.scores[2]
    assert architect.version == 0  # its truncated revision did not replace it
    assert [(c.name, c.passed) for c in architect.checks if c.applicable] == [
        ("complete", False),
        ("requirements", False),
    ]
    assert result.synthesis is not None and result.synthesis.content.startswith("Merged")

    # Totals per stage and agent add up to the deliberation's.
    usage = result.usage
    assert {stage: u.calls for stage, u in usage.by_stage.items()} == {
        "proposal": 3,
        "critique": 3,
        "revision": 3,
        "ranking": 3,
        "synthesis": 1,
    }
    assert sum(u.completion_tokens for u in usage.by_stage.values()) == result.completion_tokens > 0
    assert sum(u.prompt_tokens for u in usage.by_agent.values()) == result.prompt_tokens
    assert set(usage.stage_ms) == {"proposal", "critique", "ranking", "synthesis"}

    # Events: each agent and critique once, then the ranking, then the verdict, in that order.
    events = read_events(result.deliberation_id)
    subjects = [e.subject for e in events if not isinstance(e, AgentResponseEvent)]
    assert subjects == [DELIBERATION_REVIEW_COMPLETED] * 3 + [DELIBERATION_RANKED, DELIBERATION_COMPLETED]
    assert Counter(e.agent_id for e in events if isinstance(e, AgentResponseEvent)) == dict.fromkeys(
        PROPOSALS, 1
    )
    reviews = [e for e in events if isinstance(e, ReviewEvent)]
    assert {(e.critic_id, e.author_id) for e in reviews} == {(c.agent_id, c.subject_id) for c in critiques}
    ranked = next(e for e in events if isinstance(e, RankedEvent))
    assert ranked.winner == "agent-dev-001" and ranked.ballots_counted == 2
    final = next(e for e in events if isinstance(e, DeliberationEvent))
    assert final.winner == "agent-dev-001" and final.winner_score == winner.score

    # Stored for later, and shown on the flow run.
    with EventBus.connect(bus_config_for(nats_url)) as bus:
        assert bus.load_result(result.deliberation_id) == result
    artifacts = _artifacts(state.state_details.flow_run_id)
    assert {"table", "markdown"} <= set(artifacts)
    report = artifacts["markdown"].data
    assert "## Winner: agent-dev-001 (DEV)" in report and "Critique from" in report
    assert "✗ code_parses" in report


def test_review_stages_degrade_into_abstentions_within_the_deadline(pipeline: FakeLLMServer) -> None:
    pipeline.responder = scripted
    # QA's critic hangs: its critique is cut at the deadline, and nothing after it fails.
    pipeline.script("agent-architect-001.critique.r1.agent-qa-001", HANG)
    request = DeliberationRequest(
        task="Add rate limiting",
        roles=["DEV", "QA", "ARCHITECT"],
        critics=1,
        deadline_seconds=25,
        deliberation_id=uuid.uuid4().hex,
    )
    state = deliberate(request=request, return_state=True)
    result = state.result()
    assert state.is_completed() and isinstance(result, DeliberationResult)
    late = next(c for c in result.reviews if c.call_id == "agent-architect-001.critique.r1.agent-qa-001")
    assert late.status is AgentStatus.TIMED_OUT and late.error is not None
    assert late.error.type == "DeadlineExceeded"
    assert any(
        gap.startswith("critique agent-architect-001.critique.r1.agent-qa-001") for gap in result.incomplete
    )
    assert "no peer ranking: deadline of 25 s reached" in result.incomplete
    # The verdict still stands, on the checks alone.
    assert result.winner is not None and result.winner.agent_id == "agent-dev-001"
    assert all(s.peer_score is None for s in result.scores)

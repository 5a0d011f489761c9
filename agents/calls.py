"""The records of a deliberation's model calls: every stage's calls planned here (their
ids, which key them in the call ledger, their prompts and options), and what came of each."""

from __future__ import annotations

from typing import Any

from agents.models import (
    CHAIR_ID,
    AgentSpec,
    AgentStatus,
    ChatCompletion,
    DeliberationRequest,
    ErrorInfo,
    ModelCall,
    Stage,
    StageCall,
)
from agents.prompts import (
    critique_messages,
    proposal_messages,
    ranking_messages,
    revision_messages,
    synthesis_messages,
)
from agents.proposal_form import PROPOSAL_SCHEMA
from agents.ranking import ballot_schema

# What a call's record keeps of the model's answer, and a proposal carries on.
COMPLETION_FIELDS = {"content", "finish_reason", "prompt_tokens", "completion_tokens", "latency_ms"}
# Rankings should be reproducible judgements, not creative writing.
RANKING_TEMPERATURE = 0.2


def call_id_for(stage: Stage, agent_id: str, round_: int = 0, subject_id: str | None = None) -> str:
    """A call's id within its deliberation, which keys it in the call ledger: the bare agent
    id for a proposal, else who speaks, the stage, the round and whom it is about, as in
    `agent-qa-001.critique.r1.agent-dev-001`, `agent-dev-001.revision.r1`,
    `agent-qa-001.ranking`, `chair.synthesis`."""
    if stage is Stage.PROPOSAL:
        return agent_id
    parts = [agent_id, str(stage)]
    if round_:
        parts.append(f"r{round_}")
    if subject_id is not None and subject_id != agent_id:
        parts.append(subject_id)
    return ".".join(parts)


def run_name(call: ModelCall) -> str:
    """The call's task run name in the Prefect UI and the live view, one scheme for every
    stage: `<agent id>.<stage>[.r<round>][.<subject>]` (a proposal's call id is the bare
    agent id, so its name adds `.proposal`)."""
    return f"{call.agent_id}.{call.stage}" if call.stage is Stage.PROPOSAL else call.call_id


def plan_call(
    request: DeliberationRequest,
    stage: Stage,
    agent_id: str,
    messages: list[dict[str, str]],
    temperature: float,
    round_: int = 0,
    subject_id: str | None = None,
    answer_schema: dict[str, Any] | None = None,
) -> ModelCall:
    """One model call of the deliberation, whatever its stage."""
    return ModelCall(
        call_id=call_id_for(stage, agent_id, round_, subject_id),
        stage=stage,
        agent_id=agent_id,
        messages=messages,
        temperature=temperature,
        max_tokens=request.max_tokens,
        round=round_,
        subject_id=subject_id,
        answer_schema=answer_schema,
    )


def proposal_call(request: DeliberationRequest, agent: AgentSpec, structured: bool = False) -> ModelCall:
    """An agent's proposal; `structured` (a code task, on a server that can hold an answer
    to a schema): in agents.proposal_form's JSON form."""
    return plan_call(
        request,
        Stage.PROPOSAL,
        agent.agent_id,
        proposal_messages(request, agent, structured),
        agent.temperature,
        answer_schema=PROPOSAL_SCHEMA if structured else None,
    )


def critique_call(
    request: DeliberationRequest, critic: AgentSpec, author_id: str, proposal: str, round_: int
) -> ModelCall:
    """`critic`'s critique of the latest version of `author_id`'s proposal."""
    return plan_call(
        request,
        Stage.CRITIQUE,
        critic.agent_id,
        critique_messages(request, critic, proposal),
        request.temperature,
        round_,
        subject_id=author_id,
    )


def revision_call(
    request: DeliberationRequest,
    author: AgentSpec,
    proposal: str,
    critiques: list[str],
    round_: int,
    structured: bool = False,
) -> ModelCall:
    """`author`'s revision of its proposal with the critiques it received; `structured`: in
    the proposal's JSON form, as its proposal was asked."""
    return plan_call(
        request,
        Stage.REVISION,
        author.agent_id,
        revision_messages(request, author, proposal, critiques, structured),
        author.temperature,
        round_,
        subject_id=author.agent_id,
        answer_schema=PROPOSAL_SCHEMA if structured else None,
    )


def ranking_call(
    request: DeliberationRequest, reviewer: AgentSpec, labelled: dict[str, str], as_json: bool
) -> ModelCall:
    """`reviewer`'s ballot over the proposals shown under their labels; held to the ballot's
    JSON schema where its server can (`as_json`)."""
    return plan_call(
        request,
        Stage.RANKING,
        reviewer.agent_id,
        ranking_messages(request, reviewer, labelled, as_json),
        RANKING_TEMPERATURE,
        answer_schema=ballot_schema(list(labelled)) if as_json else None,
    )


def synthesis_call(request: DeliberationRequest, best: list[str]) -> ModelCall:
    """The chair's merge of the best proposals, the winner first."""
    return plan_call(
        request, Stage.SYNTHESIS, CHAIR_ID, synthesis_messages(request, best), request.temperature
    )


def finished_call(
    call: ModelCall,
    status: AgentStatus,
    attempts: int,
    reply: ChatCompletion | None = None,
    error: ErrorInfo | None = None,
    duration_ms: int = 0,
) -> StageCall:
    """What came of a call: its reply, or the error that ended it."""
    answered = {}
    if reply is not None:
        answered = reply.model_dump(include=COMPLETION_FIELDS | {"model"})
        answered.update(
            prompt_tokens=reply.prompt_tokens or 0, completion_tokens=reply.completion_tokens or 0
        )
    return StageCall(
        call_id=call.call_id,
        stage=call.stage,
        agent_id=call.agent_id,
        round=call.round,
        subject_id=call.subject_id,
        structured=call.answer_schema is not None,
        status=status,
        attempts=attempts,
        error=error,
        duration_ms=duration_ms,
        **answered,
    )

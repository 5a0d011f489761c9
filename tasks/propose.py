"""generate_proposal: one agent's chat completion, as a Prefect task run on Ray."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.context import TaskRunContext

from agents.llm import LLMEndpoint
from agents.models import AgentSpec, DeliberationRequest, Proposal
from agents.prompts import proposal_messages
from tasks.model_call import MODEL_CALL_TASK_OPTIONS, call_model


def proposal_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    # A retried or repeated flow run with the same deliberation id reuses finished
    # proposals instead of calling the model again.
    return f"proposal-{parameters['deliberation_id']}-{parameters['agent'].agent_id}"


@task(name="generate_proposal", cache_key_fn=proposal_cache_key, **MODEL_CALL_TASK_OPTIONS)
async def generate_proposal(
    deliberation_id: str,
    request: DeliberationRequest,
    agent: AgentSpec,
    endpoint: LLMEndpoint,
    llm_limit: str | None = None,
) -> Proposal:
    """Ask the model for `agent`'s proposal, holding a slot of the global concurrency
    limit `llm_limit` during the call. The flow sets timeout and retries per run."""
    reply = await call_model(
        endpoint,
        proposal_messages(request, agent),
        temperature=agent.temperature,
        max_tokens=request.max_tokens,
        user=agent.agent_id,
        llm_limit=llm_limit,
    )
    return Proposal(
        content=reply.content,
        author_id=agent.agent_id,
        author_role=agent.role,
        model=reply.model,
        temperature=agent.temperature,
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
        latency_ms=reply.latency_ms,
        finish_reason=reply.finish_reason,
    )

"""generate_proposal: one agent's chat completion, as a Prefect task run on Ray."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager, nullcontext
from datetime import timedelta
from typing import Any

from prefect import Task, task
from prefect.client.schemas.objects import State, TaskRun
from prefect.concurrency.asyncio import concurrency
from prefect.context import TaskRunContext

from agents.errors import LLMError, LLMUnavailable
from agents.llm import ChatClient, LLMEndpoint
from agents.models import AgentSpec, DeliberationRequest, Proposal
from agents.prompts import proposal_messages
from tasks.credentials import model_api_key

MAX_RETRY_AFTER_SECONDS = 60.0


def is_transient(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry connection failures, 429/5xx and timed-out attempts; nothing else."""
    exc = state.data
    if isinstance(exc, LLMError):
        return exc.retryable
    return isinstance(exc, TimeoutError)


def proposal_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    # A retried or repeated flow run with the same deliberation id reuses finished
    # proposals instead of calling the model again.
    return f"proposal-{parameters['deliberation_id']}-{parameters['agent'].agent_id}"


async def _honour_retry_after(exc: LLMUnavailable) -> None:
    """Wait as long as the server asked (429/503 Retry-After) before the next attempt.
    Prefect's retry delay is fixed per task, so the wait happens here, outside the
    concurrency slot, and only when another attempt will follow."""
    context = TaskRunContext.get()
    if exc.retry_after and context is not None and context.task_run.run_count <= context.task.retries:
        await asyncio.sleep(min(exc.retry_after, MAX_RETRY_AFTER_SECONDS))


def _llm_slot(limit: str | None) -> AbstractAsyncContextManager[None]:
    # strict: the flow created the limit, so a missing one is a bug, not "no limit".
    return concurrency(limit, occupy=1, strict=True) if limit else nullcontext()


@task(
    name="generate_proposal",
    retries=3,
    retry_delay_seconds=[1, 2, 4],
    retry_jitter_factor=0.5,
    retry_condition_fn=is_transient,
    timeout_seconds=60,
    cache_key_fn=proposal_cache_key,
    cache_expiration=timedelta(days=1),
    persist_result=True,
)
async def generate_proposal(
    deliberation_id: str,
    request: DeliberationRequest,
    agent: AgentSpec,
    endpoint: LLMEndpoint,
    llm_limit: str | None = None,
) -> Proposal:
    """Ask the model for `agent`'s proposal, holding a slot of the global concurrency
    limit `llm_limit` during the call. The flow sets timeout and retries per run."""
    # Loaded here, never passed in: parameters are visible in the Prefect API.
    # In a thread, because Secret.load is the blocking kind outside an event loop.
    api_key = await asyncio.to_thread(model_api_key, endpoint.api_key_secret, endpoint.api_key_env)
    # Each Ray task runs its own event loop, so the client lives for one attempt.
    try:
        async with ChatClient(endpoint, api_key) as client, _llm_slot(llm_limit):
            reply = await client.complete(
                proposal_messages(request, agent),
                temperature=agent.temperature,
                max_tokens=request.max_tokens,
                user=agent.agent_id,
            )
    except LLMUnavailable as exc:
        await _honour_retry_after(exc)
        raise
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

"""One chat completion inside a Prefect task on Ray: the API key read in the worker, a slot
of the global LLM concurrency limit held during the call, Retry-After honoured."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager, nullcontext
from datetime import timedelta
from typing import Any

from prefect import Task
from prefect.client.schemas.objects import State, TaskRun
from prefect.concurrency.asyncio import concurrency
from prefect.context import TaskRunContext

from agents.errors import LLMError, LLMUnavailable
from agents.llm import ChatClient, ChatCompletion, LLMEndpoint
from tasks.credentials import model_api_key

MAX_RETRY_AFTER_SECONDS = 60.0


def is_transient(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry connection failures, 429/5xx and timed-out attempts; nothing else."""
    exc = state.data
    if isinstance(exc, LLMError):
        return exc.retryable
    return isinstance(exc, TimeoutError)


# Every model-call task: retried only when it helps, cut per attempt, its result persisted
# so that a retried or repeated flow run does not ask again. The flow sets timeout and
# retries per run from the settings.
MODEL_CALL_TASK_OPTIONS: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [1, 2, 4],
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": is_transient,
    "timeout_seconds": 60,
    "cache_expiration": timedelta(days=1),
    "persist_result": True,
}


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


async def call_model(
    endpoint: LLMEndpoint,
    messages: list[dict[str, str]],
    *,
    temperature: float,
    max_tokens: int,
    user: str,
    llm_limit: str | None,
) -> ChatCompletion:
    # Loaded here, never passed in: parameters are visible in the Prefect API.
    # In a thread, because Secret.load is the blocking kind outside an event loop.
    api_key = await asyncio.to_thread(model_api_key, endpoint.api_key_secret, endpoint.api_key_env)
    # Each Ray task runs its own event loop, so the client lives for one attempt.
    try:
        async with ChatClient(endpoint, api_key) as client, _llm_slot(llm_limit):
            return await client.complete(messages, temperature=temperature, max_tokens=max_tokens, user=user)
    except LLMUnavailable as exc:
        await _honour_retry_after(exc)
        raise

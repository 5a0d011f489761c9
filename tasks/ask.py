"""ask_model: every model call of a deliberation (proposal, critique, revision, ranking,
synthesis) as one Prefect task run. The prompt is planned by the flow, so the task is the
same for every stage; its run name says which call it is.

The call holds a slot of a Prefect global concurrency limit if one is named, honours
Retry-After, and reads the API key in the process that calls (never a parameter)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import weakref
from contextlib import AbstractAsyncContextManager, nullcontext
from datetime import timedelta
from typing import Any

from prefect import Task, task
from prefect.client.schemas.objects import State, TaskRun
from prefect.concurrency.asyncio import concurrency
from prefect.context import TaskRunContext

from agents.errors import LLMError, LLMUnavailable
from agents.llm import ChatClient, ChatCompletion, LLMEndpoint
from agents.models import ModelCall
from tasks.credentials import model_api_key

MAX_RETRY_AFTER_SECONDS = 60.0


def is_transient(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry connection failures, 429/5xx and timed-out attempts; nothing else."""
    exc = state.data
    if isinstance(exc, LLMError):
        return exc.retryable
    return isinstance(exc, TimeoutError)


def call_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    # The prompt is part of the key: a retried or repeated flow run reuses a call only if
    # it would ask exactly the same (say, a revision made from the same critiques).
    call: ModelCall = parameters["call"]
    digest = hashlib.sha256(json.dumps(call.messages, sort_keys=True).encode()).hexdigest()[:16]
    return f"call-{parameters['deliberation_id']}-{call.call_id}-{digest}"


async def _honour_retry_after(exc: LLMUnavailable) -> None:
    """Wait as long as the server asked (429/503 Retry-After) before the next attempt.
    Prefect's retry delay is fixed per task, so the wait happens here, outside the
    concurrency slot, and only when another attempt will follow."""
    context = TaskRunContext.get()
    if exc.retry_after and context is not None and context.task_run.run_count <= context.task.retries:
        await asyncio.sleep(min(exc.retry_after, MAX_RETRY_AFTER_SECONDS))


# One client per endpoint and event loop, kept for the life of the loop: a call host runs
# many calls on one loop, and a new httpx client costs an SSL context (tens of ms of CPU).
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str | None], ChatClient]] = (
    weakref.WeakKeyDictionary()
)


def _shared_client(endpoint: LLMEndpoint, api_key: str | None) -> ChatClient:
    clients = _clients.setdefault(asyncio.get_running_loop(), {})
    key = (endpoint.model_dump_json(), api_key)
    if key not in clients:
        clients[key] = ChatClient(endpoint, api_key)
    return clients[key]


def _llm_slot(limit: str | None) -> AbstractAsyncContextManager[None]:
    # strict: the flow created the limit, so a missing one is a bug, not "no limit".
    return concurrency(limit, occupy=1, strict=True) if limit else nullcontext()


# Retried only when it helps, cut per attempt, the result persisted so that a retried or
# repeated flow run does not ask again. The flow sets timeout and retries per call.
@task(
    name="ask_model",
    cache_key_fn=call_cache_key,
    cache_expiration=timedelta(days=1),
    persist_result=True,
    retries=3,
    retry_delay_seconds=[1, 2, 4],
    retry_jitter_factor=0.5,
    retry_condition_fn=is_transient,
    timeout_seconds=60,
)
async def ask_model(
    deliberation_id: str, call: ModelCall, endpoint: LLMEndpoint, llm_limit: str | None = None
) -> ChatCompletion:
    """One chat completion; the call id doubles as the OpenAI `user` field."""
    # Loaded here, never passed in: parameters are visible in the Prefect API.
    # In a thread, because Secret.load is the blocking kind outside an event loop.
    api_key = await asyncio.to_thread(model_api_key, endpoint.api_key_secret, endpoint.api_key_env)
    try:
        async with _llm_slot(llm_limit):
            return await _shared_client(endpoint, api_key).complete(
                call.messages, temperature=call.temperature, max_tokens=call.max_tokens, user=call.call_id
            )
    except LLMUnavailable as exc:
        await _honour_retry_after(exc)
        raise

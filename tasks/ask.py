"""ask_model: every model call of a deliberation (proposal, critique, revision, ranking,
synthesis) as one Prefect task run. The prompt is planned by the flow, so the task is the
same for every stage; its run name says which call it is.

The call holds a slot of a Prefect global concurrency limit if one is named, honours
Retry-After, and reads the API key in the process that calls (never a parameter)."""

from __future__ import annotations

import asyncio
import functools
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.concurrency.asyncio import concurrency
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger

from agents.adapters.llm import chat_client
from agents.adapters.secrets import model_api_key
from agents.config import LLMEndpoint
from agents.errors import LLMError, LLMRejected, LLMUnavailable
from agents.models import ChatCompletion, ModelCall

MAX_RETRY_AFTER_SECONDS = 60.0


def is_transient(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry connection failures, 429/5xx and timed-out attempts; nothing else."""
    exc = state.data
    if isinstance(exc, LLMError):
        return exc.retryable
    return isinstance(exc, TimeoutError)


async def _honour_retry_after(exc: LLMUnavailable) -> None:
    """Wait as long as the server asked (429/503 Retry-After) before the next attempt.
    Prefect's retry delay is fixed per task, so the wait happens here, outside the
    concurrency slot, and only when another attempt will follow."""
    context = TaskRunContext.get()
    if exc.retry_after and context is not None and context.task_run.run_count <= context.task.retries:
        await asyncio.sleep(min(exc.retry_after, MAX_RETRY_AFTER_SECONDS))


# A cancelled call gives its slot back as it unwinds; a call whose host process is killed
# cannot, so its lease is kept to the shortest Prefect's API accepts (it is renewed while
# the call runs): the slot comes back within about a minute instead of Prefect's 300 s.
SLOT_LEASE_SECONDS = 60.0


def _llm_slot(limit: str | None) -> AbstractAsyncContextManager[None]:
    # strict: the flow created the limit, so a missing one is a bug, not "no limit".
    if not limit:
        return nullcontext()
    return concurrency(limit, occupy=1, strict=True, lease_duration=SLOT_LEASE_SECONDS)


# Retried only when it helps. How often, and each attempt's timeout, the flow sets per call
# (CallRunner: from Settings and the deliberation's deadline). Not cached or persisted by
# Prefect: the flow records every outcome in the call ledger (NATS), which a rerun reads on
# any machine.
@task(
    name="ask_model",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_jitter_factor=0.5,
    retry_condition_fn=is_transient,
)
async def ask_model(
    deliberation_id: str, call: ModelCall, endpoint: LLMEndpoint, llm_limit: str | None = None
) -> ChatCompletion:
    """One chat completion; the call id doubles as the OpenAI `user` field."""
    # Loaded here, never passed in: parameters are visible in the Prefect API. A Secret
    # block is loaded in a thread (Secret.load is the blocking kind outside an event loop);
    # a variable is read here, as a thread hop per call was 1.8 % of a call host's CPU.
    if endpoint.api_key_secret:
        api_key = await asyncio.to_thread(model_api_key, endpoint.api_key_secret, endpoint.api_key_env)
    else:
        api_key = model_api_key(None, endpoint.api_key_env)
    schema = (
        (str(call.stage), call.answer_schema) if call.answer_schema and endpoint.constrains_json else None
    )
    try:
        async with _llm_slot(llm_limit), chat_client(endpoint, api_key) as client:
            complete = functools.partial(
                client.complete,
                call.messages,
                temperature=call.temperature,
                max_tokens=call.max_tokens,
                user=call.call_id,
            )
            try:
                return await complete(schema=schema)
            except LLMRejected as exc:
                if schema is None:
                    raise
                # The preflight guessed the server's dialect from its model list; a server
                # that refuses it still answers the prompt, which says the format too.
                get_run_logger().warning(
                    "%s; asking again without the JSON schema (set the endpoint's "
                    "structured_output to none to skip this)",
                    exc,
                )
                return await complete()
    except LLMUnavailable as exc:
        await _honour_retry_after(exc)
        raise

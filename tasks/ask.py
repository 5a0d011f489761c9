"""ask_model: one model call of the review stages (critique, revision, ranking,
synthesis), as a Prefect task run on Ray. The prompt is built by the flow, so the task is
the same for every stage; its run name and tags say which stage it serves."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from prefect import task
from prefect.context import TaskRunContext

from agents.llm import ChatCompletion, LLMEndpoint
from tasks.model_call import MODEL_CALL_TASK_OPTIONS, call_model


def call_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    # The prompt is part of the key: a retried flow run reuses a call only if it would
    # ask exactly the same (say, a revision made from the same critiques).
    digest = hashlib.sha256(json.dumps(parameters["messages"], sort_keys=True).encode()).hexdigest()[:16]
    return f"call-{parameters['deliberation_id']}-{parameters['call_id']}-{digest}"


@task(name="ask_model", cache_key_fn=call_cache_key, **MODEL_CALL_TASK_OPTIONS)
async def ask_model(
    deliberation_id: str,
    call_id: str,
    endpoint: LLMEndpoint,
    messages: list[dict[str, str]],
    temperature: float,
    max_tokens: int,
    llm_limit: str | None = None,
) -> ChatCompletion:
    """One chat completion; `call_id` doubles as the OpenAI `user` field."""
    return await call_model(
        endpoint,
        messages,
        temperature=temperature,
        max_tokens=max_tokens,
        user=call_id,
        llm_limit=llm_limit,
    )

"""Checks made before any agent runs, so bad configuration fails fast and publishes nothing."""

from __future__ import annotations

import asyncio

from agents.adapters.llm import ChatClient, redact_url
from agents.adapters.nats import EventBus
from agents.adapters.secrets import model_api_key, nats_token
from agents.config import LLMEndpoint
from agents.errors import (
    BusUnreachable,
    ConfigurationError,
    EventBusError,
    LLMError,
    LLMUnavailable,
    Unreachable,
)
from agents.settings import Settings


def resolve_model_endpoint(settings: Settings, requested_model: str | None) -> LLMEndpoint:
    """The endpoint to use, with the model checked against what the server serves (with
    the API key from its Secret block or variable). Model choice: the request's, else
    VLLM_MODEL, else the server's first model."""
    if settings.vllm_url is None:
        raise ConfigurationError("no model server configured: set VLLM_URL (or --vllm-url)")
    api_key = model_api_key(settings.vllm_api_key_secret, settings.vllm_api_key_env)
    probe = settings.llm_endpoint(model=requested_model or settings.vllm_model or "")

    async def served_models() -> list[str]:
        async with ChatClient(probe, api_key) as client:
            return await client.list_models()

    try:
        served = asyncio.run(served_models())
    except LLMUnavailable as exc:
        raise Unreachable(f"{exc}; check VLLM_URL (or --vllm-url)") from None
    except LLMError as exc:
        raise ConfigurationError(f"{exc}; check VLLM_URL (or --vllm-url) and the API key") from None
    if not served:
        raise ConfigurationError(f"{redact_url(probe.url)} serves no model")
    model = probe.model or served[0]
    if model not in served:
        raise ConfigurationError(
            f"model {model!r} is not served by {redact_url(probe.url)}; it serves: {', '.join(served)}"
        )
    return probe.model_copy(update={"model": model})


def connect_event_bus(settings: Settings) -> EventBus:
    """A connected event bus (the streams made sure of), with the NATS token from its
    Secret block if one is named."""
    if settings.nats_url is None:
        raise ConfigurationError("no NATS server configured: set NATS_URL (or --nats-url)")
    try:
        return EventBus.connect(settings.bus_config(nats_token(settings)))
    except BusUnreachable as exc:
        raise Unreachable(str(exc)) from None
    except EventBusError as exc:
        raise ConfigurationError(str(exc)) from None

"""Checks made before any agent runs, so bad configuration fails fast and publishes nothing."""

from __future__ import annotations

import asyncio

from agents.adapters.llm import ChatClient, redact_url
from agents.adapters.nats import EventBus
from agents.adapters.secrets import model_api_key, nats_token
from agents.config import DEFAULT_ENDPOINT, LLMEndpoint
from agents.errors import (
    BusUnreachable,
    ConfigurationError,
    EventBusError,
    LLMError,
    LLMUnavailable,
    Unreachable,
)
from agents.models import CHAIR_ID, DeliberationRequest
from agents.planning import assign_endpoints, plan_council
from agents.settings import Settings


def resolve_speakers(settings: Settings, request: DeliberationRequest) -> dict[str, LLMEndpoint]:
    """The endpoint each member (and the chair, if it synthesizes) speaks through, by agent
    id, every one checked (reachable, its API key accepted, serving the model) and
    completed: its model (the request's for the default endpoint, else VLLM_MODEL or the
    endpoint's, else the server's first) and how it constrains JSON answers. Raises
    ConfigurationError naming the endpoint."""
    assigned = assign_endpoints(request, plan_council(request))
    if not request.synthesize:
        assigned.pop(CHAIR_ID)
    wanted = sorted(set(assigned.values()), key=lambda name: (name != DEFAULT_ENDPOINT, name))
    defined = settings.named_endpoints()
    unknown = sorted(name for name in wanted if name != DEFAULT_ENDPOINT and name not in defined)
    if unknown:
        known = ", ".join([DEFAULT_ENDPOINT, *sorted(defined)])
        raise ConfigurationError(
            f"unknown model endpoint {unknown[0]!r}; defined: {known} (DELIBERATION_ENDPOINTS)"
        )

    async def check_all() -> list[LLMEndpoint]:
        return list(
            await asyncio.gather(
                *(
                    _checked(
                        default_endpoint(settings, request.model)
                        if name == DEFAULT_ENDPOINT
                        else defined[name]
                    )
                    for name in wanted
                )
            )
        )

    checked = {endpoint.name: endpoint for endpoint in asyncio.run(check_all())}
    return {agent_id: checked[name] for agent_id, name in assigned.items()}


def default_endpoint(settings: Settings, requested_model: str | None = None) -> LLMEndpoint:
    if settings.vllm_url is None:
        raise ConfigurationError("no model server configured: set VLLM_URL (or --vllm-url)")
    return settings.llm_endpoint(model=requested_model or settings.vllm_model or "")


def check_default_endpoint(settings: Settings) -> LLMEndpoint:
    """The default endpoint, checked as `resolve_speakers` checks each."""
    return asyncio.run(_checked(default_endpoint(settings)))


async def _checked(endpoint: LLMEndpoint) -> LLMEndpoint:
    where = redact_url(endpoint.url)
    if endpoint.name == DEFAULT_ENDPOINT:
        name, hint = "", "check VLLM_URL (or --vllm-url)"
    else:
        name, hint = (
            f"model endpoint {endpoint.name!r}: ",
            f"check endpoint {endpoint.name!r} in DELIBERATION_ENDPOINTS",
        )
    api_key = await asyncio.to_thread(model_api_key, endpoint.api_key_secret, endpoint.api_key_env)
    try:
        async with ChatClient(endpoint, api_key) as client:
            served = await client.served_models()
    except LLMUnavailable as exc:
        raise Unreachable(f"{name}{exc}; {hint}") from None
    except LLMError as exc:
        raise ConfigurationError(f"{name}{exc}; {hint} and its API key") from None
    if not served:
        raise ConfigurationError(f"{name}{where} serves no model")
    model = endpoint.model or served[0].id
    card = next((s for s in served if s.id == model), None)
    if card is None:
        raise ConfigurationError(
            f"{name}model {model!r} is not served by {where}; it serves: {', '.join(s.id for s in served)}"
        )
    structured = (
        card.structured_output if endpoint.structured_output == "auto" else endpoint.structured_output
    )
    window = endpoint.context_window or card.context_window
    return endpoint.model_copy(
        update={"model": model, "structured_output": structured, "context_window": window}
    )


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

"""The one client for OpenAI-compatible chat servers (vLLM, llama.cpp server, ...).

Every httpx failure is mapped here to LLMUnavailable (retryable) or LLMRejected /
LLMBadResponse (permanent), so callers never see transport details.
"""

from __future__ import annotations

import functools
import itertools
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from agents.config import LLMEndpoint, StructuredOutput
from agents.errors import LLMBadResponse, LLMRejected, LLMUnavailable
from agents.models import ChatCompletion

M = TypeVar("M", bound=BaseModel)


class _Lenient(BaseModel):
    # Servers differ in optional fields (llama.cpp has no `created` in /v1/models).
    model_config = ConfigDict(extra="ignore")


class _Message(_Lenient):
    content: str | None = None


class _Choice(_Lenient):
    message: _Message
    finish_reason: str | None = None


class _Usage(_Lenient):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _ChatResponse(_Lenient):
    model: str | None = None
    choices: list[_Choice]
    usage: _Usage | None = None


class _ModelCard(_Lenient):
    id: str
    owned_by: str | None = None
    max_model_len: int | None = None  # vLLM's own field


class _ModelList(_Lenient):
    data: list[_ModelCard]


@dataclass(frozen=True)
class ServedModel:
    """A model a server lists, with what tells which server it is."""

    id: str
    structured_output: StructuredOutput
    context_window: int | None = None  # where the card says (vLLM's max_model_len)


def _structured_output_of(card: _ModelCard) -> StructuredOutput:
    """How the server behind a model card constrains answers to a JSON schema, as far as
    its card tells: vLLM's cards say `owned_by: vllm` and carry `max_model_len`;
    llama.cpp's server says `llamacpp`, llama-cpp-python's `me`. Others: none (the answer
    is read as text); an endpoint can say otherwise (`structured_output`)."""
    if card.owned_by == "vllm" or card.max_model_len is not None:
        return "json_schema"
    if card.owned_by in ("llamacpp", "me"):
        return "json_object"
    return "none"


def response_format(
    dialect: StructuredOutput | Literal["auto"], name: str, schema: dict[str, Any]
) -> dict[str, Any] | None:
    """The `response_format` that asks a server of this dialect for an answer following
    `schema`; None where it cannot constrain one."""
    if dialect == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    if dialect == "json_object":
        return {"type": "json_object", "schema": schema}
    return None


def redact_url(url: str) -> str:
    """The URL without user info, for messages (credentials may be embedded in it)."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(userinfo=b"")) if parsed.userinfo else url


def _retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """What httpx builds for every client by default (its CA bundle, or SSL_CERT_FILE and
    SSL_CERT_DIR), built once per process: loading the CA bundle is the costly part of a
    new client (BENCHMARKS.md), and a call host holds several clients."""
    return httpx.create_ssl_context()


class ChatClient:
    """An async client for one endpoint; use it as `async with ChatClient(...) as client`."""

    def __init__(self, endpoint: LLMEndpoint, api_key: str | None = None) -> None:
        self.endpoint = endpoint
        self._where = redact_url(endpoint.url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=endpoint.url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(endpoint.read_timeout, connect=endpoint.connect_timeout),
            # How many calls run at once is the caller's limit, not the connection pool's.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            verify=_tls_context(),
        )

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float,
        max_tokens: int,
        user: str | None = None,
        schema: tuple[str, dict[str, Any]] | None = None,
    ) -> ChatCompletion:
        """One chat completion; `schema` (a name and a JSON schema) constrains the answer
        where the endpoint can. Raises LLMUnavailable, LLMRejected or LLMBadResponse."""
        body: dict[str, Any] = {
            "model": self.endpoint.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        if user:
            body["user"] = user
        if schema is not None and (constraint := response_format(self.endpoint.structured_output, *schema)):
            body["response_format"] = constraint
        started = time.monotonic()
        response = await self._request("POST", "/v1/chat/completions", json=body)
        reply = self._parse(response, _ChatResponse)
        if not reply.choices:
            raise LLMBadResponse(f"{self._where} answered with no choices")
        choice = reply.choices[0]
        if choice.message.content is None:
            raise LLMBadResponse(f"{self._where} answered with no message content")
        usage = reply.usage or _Usage()
        return ChatCompletion(
            content=choice.message.content,
            finish_reason=choice.finish_reason,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            model=reply.model or self.endpoint.model,
            latency_ms=int((time.monotonic() - started) * 1000),
        )

    async def list_models(self) -> list[str]:
        return [served.id for served in await self.served_models()]

    async def served_models(self) -> list[ServedModel]:
        response = await self._request("GET", "/v1/models")
        return [
            ServedModel(
                card.id,
                _structured_output_of(card),
                card.max_model_len if (card.max_model_len or 0) > 0 else None,
            )
            for card in self._parse(response, _ModelList).data
        ]

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise LLMUnavailable(f"{self._where} timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise LLMUnavailable(
                f"cannot reach {self._where}: {type(exc).__name__}: {exc or 'connection lost'}"
            ) from None
        code = response.status_code
        if code == 429 or code >= 500:
            raise LLMUnavailable(
                f"{self._where} answered {code}", retry_after=_retry_after_seconds(response), status=code
            )
        if code >= 400:
            raise LLMRejected(
                f"{self._where} rejected the request: {code} {response.text[:300]}", status=code
            )
        return response

    def _parse(self, response: httpx.Response, model: type[M]) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise LLMBadResponse(
                f"{self._where} sent a malformed {model.__name__.strip('_')}: {exc.errors()[0]['msg']}"
            ) from None


# A few clients per endpoint, taken in turn, because httpcore's pool rescans every
# connection it holds each time it assigns a request, which is quadratic in a burst of
# calls (encode/httpcore#1035).
CLIENTS_PER_ENDPOINT = 4


class ChatClientPool:
    """Long-lived clients shared by many calls on one event loop, a few per endpoint and
    key; `aclose` closes them all. A call host holds one per flow run it serves."""

    def __init__(self, per_endpoint: int = CLIENTS_PER_ENDPOINT) -> None:
        self._per_endpoint = per_endpoint
        self._clients: dict[tuple[str, str | None], tuple[list[ChatClient], itertools.count[int]]] = {}

    def client(self, endpoint: LLMEndpoint, api_key: str | None) -> ChatClient:
        key = (endpoint.model_dump_json(), api_key)
        if key not in self._clients:
            clients = [ChatClient(endpoint, api_key) for _ in range(self._per_endpoint)]
            self._clients[key] = (clients, itertools.count())
        clients, turn = self._clients[key]
        return clients[next(turn) % len(clients)]

    async def aclose(self) -> None:
        clients = [client for pool, _ in self._clients.values() for client in pool]
        self._clients.clear()
        for client in clients:
            await client.aclose()


shared_clients: ContextVar[ChatClientPool | None] = ContextVar("shared_clients", default=None)


@asynccontextmanager
async def chat_client(endpoint: LLMEndpoint, api_key: str | None) -> AsyncIterator[ChatClient]:
    """A client for one call: from the pool of the caller's context (`shared_clients`, set
    by a call host), else one of its own, closed after the call."""
    pool = shared_clients.get()
    if pool is not None:
        yield pool.client(endpoint, api_key)
        return
    async with ChatClient(endpoint, api_key) as client:
        yield client

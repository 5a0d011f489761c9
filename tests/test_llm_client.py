"""The chat client against a real OpenAI-compatible server on 127.0.0.1."""

import pytest

from agents.embedded import free_port
from agents.errors import LLMBadResponse, LLMError, LLMRejected, LLMUnavailable
from agents.llm import ChatClient, LLMEndpoint
from tests.fake_llm import DROP, EMPTY_CHOICES, HANG, MALFORMED, Behaviour, FakeLLMServer, ok, status

MESSAGES = [{"role": "user", "content": "hello there"}]


def endpoint(url: str, read_timeout: float = 5.0) -> LLMEndpoint:
    return LLMEndpoint(
        url=url,
        model="fake-model",
        api_key_env=None,
        api_key_secret=None,
        read_timeout=read_timeout,
        connect_timeout=1.0,
    )


async def complete(server: FakeLLMServer, behaviour: Behaviour, read_timeout: float = 5.0) -> object:
    server.script("a1", behaviour)
    async with ChatClient(endpoint(server.url, read_timeout), api_key="k-123") as client:
        return await client.complete(MESSAGES, temperature=0.5, max_tokens=10, user="a1")


async def test_reads_content_finish_reason_and_usage(fake_llm: FakeLLMServer) -> None:
    reply = await complete(fake_llm, ok("the answer", finish_reason="length"))
    assert reply.content == "the answer"  # type: ignore[attr-defined]
    assert reply.finish_reason == "length"  # type: ignore[attr-defined]
    assert (reply.prompt_tokens, reply.completion_tokens) == (2, 2)  # type: ignore[attr-defined]
    call = fake_llm.calls_for("a1")[0]
    assert call.headers["authorization"] == "Bearer k-123"
    assert call.body["temperature"] == 0.5 and call.body["max_tokens"] == 10


@pytest.mark.parametrize(
    ("behaviour", "error", "retryable"),
    [
        (status(503), LLMUnavailable, True),
        (status(500), LLMUnavailable, True),
        (status(429, retry_after="7"), LLMUnavailable, True),
        (status(400), LLMRejected, False),
        (status(404), LLMRejected, False),
        (MALFORMED, LLMBadResponse, False),
        (EMPTY_CHOICES, LLMBadResponse, False),
        (Behaviour("no_content"), LLMBadResponse, False),
        (DROP, LLMUnavailable, True),
        (HANG, LLMUnavailable, True),
    ],
)
async def test_errors_are_classified(
    fake_llm: FakeLLMServer, behaviour: Behaviour, error: type[LLMError], retryable: bool
) -> None:
    with pytest.raises(error) as caught:
        await complete(fake_llm, behaviour, read_timeout=1.0)
    assert caught.value.retryable is retryable
    assert "k-123" not in str(caught.value)


async def test_retry_after_is_kept_on_the_error(fake_llm: FakeLLMServer) -> None:
    with pytest.raises(LLMUnavailable) as caught:
        await complete(fake_llm, status(429, retry_after="7"))
    assert caught.value.retry_after == 7.0


async def test_connection_refused_is_retryable() -> None:
    async with ChatClient(endpoint(f"http://127.0.0.1:{free_port()}")) as client:
        with pytest.raises(LLMUnavailable, match="cannot reach"):
            await client.complete(MESSAGES, temperature=0, max_tokens=1)


async def test_lists_models_without_optional_fields(fake_llm: FakeLLMServer) -> None:
    async with ChatClient(endpoint(fake_llm.url)) as client:
        assert await client.list_models() == ["fake-model"]


def test_errors_survive_pickling() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(LLMUnavailable("boom", retry_after=3.0)))
    assert (str(error), error.retry_after, error.retryable) == ("boom", 3.0, True)

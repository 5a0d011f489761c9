"""The chat client against a real OpenAI-compatible server on 127.0.0.1."""

import json
import os
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agents.adapters.llm import ChatClient
from agents.config import LLMEndpoint
from agents.errors import LLMBadResponse, LLMError, LLMRejected, LLMUnavailable
from flows.runtime.embedded import free_port
from tests.certificates import make_certificates
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
    ("behaviour", "error", "retryable", "code"),
    [
        (status(503), LLMUnavailable, True, 503),
        (status(500), LLMUnavailable, True, 500),
        (status(429, retry_after="7"), LLMUnavailable, True, 429),
        (status(400), LLMRejected, False, 400),
        (status(404), LLMRejected, False, 404),
        (MALFORMED, LLMBadResponse, False, None),
        (EMPTY_CHOICES, LLMBadResponse, False, None),
        (Behaviour("no_content"), LLMBadResponse, False, None),
        (DROP, LLMUnavailable, True, None),
        (HANG, LLMUnavailable, True, None),
    ],
)
async def test_errors_are_classified(
    fake_llm: FakeLLMServer, behaviour: Behaviour, error: type[LLMError], retryable: bool, code: int | None
) -> None:
    with pytest.raises(error) as caught:
        await complete(fake_llm, behaviour, read_timeout=1.0)
    assert (caught.value.retryable, caught.value.status) == (retryable, code)
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

    error = pickle.loads(pickle.dumps(LLMUnavailable("boom", retry_after=3.0, status=503)))
    assert (str(error), error.retry_after, error.retryable, error.status) == ("boom", 3.0, True, 503)


def test_an_https_model_server_is_verified_with_the_ca_the_environment_names(tmp_path: Path) -> None:
    # The TLS context is built once per process (agents.adapters.llm._tls_context), so each case
    # runs in a process of its own, as a deployment would.
    certificates = make_certificates(tmp_path)

    class Models(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"object": "list", "data": [{"id": "served-model"}]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Models)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.cert, certificates.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    script = (
        "import asyncio\n"
        "from agents.adapters.llm import ChatClient\nfrom agents.config import LLMEndpoint\n"
        f"endpoint = LLMEndpoint(url='https://127.0.0.1:{server.server_address[1]}', model='',"
        " api_key_env='NONE', api_key_secret=None, connect_timeout=5, read_timeout=5)\n"
        "async def main():\n"
        "    async with ChatClient(endpoint) as client:\n"
        "        print(await client.list_models())\n"
        "asyncio.run(main())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSL_CERT")}
    try:
        trusted = subprocess.run(
            [sys.executable, "-c", script],
            env=env | {"SSL_CERT_FILE": str(certificates.ca)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        untrusted = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        server.shutdown()
    assert trusted.stdout.strip() == "['served-model']", trusted.stderr[-2000:]
    assert untrusted.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr

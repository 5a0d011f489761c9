"""flows.runtime.temporary_api.RetryUnavailable, served by uvicorn on 127.0.0.1 in front of a
scripted app: a 503 is answered again inside the server with the same request, the last
one reaches the client, and no other answer is repeated. (The temporary API itself runs
in every cold start: tests/integration/test_bench.py.)"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from flows.runtime.temporary_api import ASGIApp, Receive, RetryUnavailable, Scope, Send

FAST = (0.001, 0.002, 0.004)


class ScriptedApp:
    """Answers each request with the next status of `statuses` (the last one repeats) and
    records the bodies it was sent. Like Starlette, it marks the scope it routes (a second
    pass over the same scope finds no route) and raises after sending a 5xx."""

    def __init__(self, *statuses: int):
        self.statuses = list(statuses)
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        message = await receive()
        self.bodies.append(message["body"])
        status = self.statuses[min(len(self.bodies), len(self.statuses)) - 1]
        if scope.setdefault("routed", len(self.bodies)) != len(self.bodies):
            status = 404
        answer = f"{scope['path']} attempt {len(self.bodies)}".encode()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": answer})
        if status >= 500:
            raise RuntimeError(f"the error behind the {status}")


@contextmanager
def served(app: ASGIApp) -> Iterator[str]:
    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="critical"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()


def post(app: ASGIApp, path: str = "/api/v2/concurrency_limits/increment-with-lease") -> httpx.Response:
    with served(app) as url:
        return httpx.post(url + path, json={"names": ["tag:llm"], "slots": 1}, timeout=10)


def test_a_503_is_answered_again_in_the_server_with_the_same_request() -> None:
    app = ScriptedApp(503, 503, 200)

    response = post(RetryUnavailable(app, delays=FAST))

    assert response.status_code == 200
    assert response.text == "/api/v2/concurrency_limits/increment-with-lease attempt 3"
    assert app.bodies == [b'{"names":["tag:llm"],"slots":1}'] * 3


def test_when_every_attempt_meets_a_503_the_client_gets_the_last_one() -> None:
    app = ScriptedApp(503)

    response = post(RetryUnavailable(app, delays=FAST))

    assert response.status_code == 503
    assert response.text.endswith(f"attempt {len(FAST) + 1}")
    assert len(app.bodies) == len(FAST) + 1


@pytest.mark.parametrize("status", [200, 404, 409, 423, 500])
def test_any_other_answer_is_sent_once(status: int) -> None:
    app = ScriptedApp(status)

    response = post(RetryUnavailable(app, delays=FAST))

    assert response.status_code == status
    assert len(app.bodies) == 1


def test_the_default_delays_give_up_within_a_second_so_prefects_own_retry_follows() -> None:
    # Beyond this, a database that stays locked is better left to the client's backoff.
    delays: Any = RetryUnavailable(ScriptedApp(200)).delays
    assert 0 < sum(delays) < 1.0

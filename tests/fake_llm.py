"""An OpenAI-compatible chat server on 127.0.0.1 for tests, scripted per agent.

It speaks HTTP over a real socket (hand-rolled, so it can also misbehave: hang, drop the
connection mid-response, send malformed JSON). Requests are matched to agents by the
OpenAI `user` field, which the pipeline sets to the agent id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Behaviour:
    kind: str = "ok"  # ok | status | hang | drop | malformed | empty_choices | no_content | barrier
    status: int = 200
    delay: float = 0.0
    retry_after: str | None = None
    content: str | None = None
    finish_reason: str = "stop"
    barrier: int = 0  # with kind="barrier": answer once this many requests are in flight


def ok(content: str | None = None, delay: float = 0.0, finish_reason: str = "stop") -> Behaviour:
    return Behaviour("ok", content=content, delay=delay, finish_reason=finish_reason)


def status(code: int, retry_after: str | None = None) -> Behaviour:
    return Behaviour("status", status=code, retry_after=retry_after)


HANG = Behaviour("hang")
DROP = Behaviour("drop")
MALFORMED = Behaviour("malformed")
EMPTY_CHOICES = Behaviour("empty_choices")


def barrier(in_flight: int) -> Behaviour:
    return Behaviour("barrier", barrier=in_flight)


@dataclass
class Call:
    agent: str | None
    body: dict[str, Any]
    headers: dict[str, str]
    behaviour: Behaviour
    started: float
    client_port: int = 0
    ended: float | None = None
    client_disconnected: bool = False


@dataclass
class FakeLLMServer:
    model: str = "fake-model"
    default: Behaviour = field(default_factory=ok)
    barrier_timeout: float = 60.0
    hang_limit: float = 120.0
    # Writes the answer from the request body (None: the default answer), like a model would.
    responder: Callable[[dict[str, Any]], str | None] | None = None
    # What its model card says of its owner (vLLM: "vllm"), from which a client may guess
    # how it constrains answers to a schema; and whether it refuses `response_format`.
    owned_by: str | None = None
    refuses_response_format: bool = False
    max_model_len: int | None = None  # its context window, as vLLM's cards say it

    def __post_init__(self) -> None:
        self.calls: list[Call] = []
        self.refused: list[dict[str, Any]] = []  # requests refused for their response_format
        self.in_flight = 0
        self.max_in_flight = 0
        self._scripts: dict[str | None, deque[Behaviour]] = defaultdict(deque)
        self._models_answers: deque[int] = deque()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._in_flight_changed: asyncio.Condition | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self.port = 0

    # -- control -------------------------------------------------------------
    def start(self) -> FakeLLMServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._in_flight_changed = asyncio.Condition()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def close() -> None:
            # Like a crashed server: stop listening and drop every open connection.
            assert self._server is not None
            self._server.close()
            for writer in list(self._connections):
                writer.transport.abort()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, agent: str, *behaviours: Behaviour) -> None:
        """Answer `agent`'s next requests with these behaviours, then with the default."""
        with self._lock:
            self._scripts[agent].extend(behaviours)

    def script_models(self, *statuses: int) -> None:
        """Answer the next requests for the model list with these HTTP statuses (an error
        body), then with the list."""
        with self._lock:
            self._models_answers.extend(statuses)

    def calls_for(self, agent: str) -> list[Call]:
        return [call for call in self.calls if call.agent == agent]

    def asked_again(self) -> list[Call]:
        """Calls that asked again what had been answered already: the same agent and the
        same messages (a deliberation's task is in them) as a call answered before they started."""
        answered: dict[tuple[str | None, str], float] = {}
        again = []
        for call in list(self.calls):  # in the order they came
            asked = (call.agent, json.dumps(call.body.get("messages"), sort_keys=True))
            if asked in answered and answered[asked] <= call.started:
                again.append(call)
            if call.ended is not None and call.behaviour.kind == "ok" and not call.client_disconnected:
                answered[asked] = min(answered.get(asked, call.ended), call.ended)
        return again

    # -- HTTP ----------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            request_line = (await reader.readline()).decode()
            if not request_line:
                return
            method, path, _ = request_line.split(" ", 2)
            headers: dict[str, str] = {}
            while (line := (await reader.readline()).decode().strip()) != "":
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if method == "GET" and path == "/v1/models":
                with self._lock:
                    code = self._models_answers.popleft() if self._models_answers else 200
                if code != 200:
                    await self._send(writer, code, {"error": {"message": f"scripted {code}"}})
                else:
                    # No `created`, as llama.cpp's server does.
                    card = {"id": self.model} | ({"owned_by": self.owned_by} if self.owned_by else {})
                    if self.max_model_len is not None:
                        card["max_model_len"] = self.max_model_len
                    await self._send(writer, 200, {"object": "list", "data": [card]})
            elif method == "POST" and path == "/v1/chat/completions":
                await self._chat(reader, writer, json.loads(body or b"{}"), headers)
            else:
                await self._send(writer, 404, {"error": {"message": f"no route {method} {path}"}})
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _chat(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        body: dict[str, Any],
        headers: dict[str, str],
    ) -> None:
        agent = body.get("user")
        if self.refuses_response_format and "response_format" in body:
            self.refused.append(body)
            await self._send(writer, 400, {"error": {"message": "response_format is not supported"}})
            return
        with self._lock:
            script = self._scripts[agent]
            behaviour = script.popleft() if script else self.default
        call = Call(
            agent,
            body,
            headers,
            behaviour,
            started=time.monotonic(),
            client_port=writer.get_extra_info("peername")[1],
        )
        self.calls.append(call)
        await self._enter()
        try:
            await self._act(reader, writer, body, behaviour, call)
        finally:
            call.ended = time.monotonic()
            await self._leave()

    async def _enter(self) -> None:
        assert self._in_flight_changed is not None
        async with self._in_flight_changed:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._in_flight_changed.notify_all()

    async def _leave(self) -> None:
        assert self._in_flight_changed is not None
        async with self._in_flight_changed:
            self.in_flight -= 1
            self._in_flight_changed.notify_all()

    async def _act(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        body: dict[str, Any],
        behaviour: Behaviour,
        call: Call,
    ) -> None:
        kind = behaviour.kind
        if kind == "hang":
            # Wait for the client to give up: read() returns b"" when it closes.
            try:
                await asyncio.wait_for(reader.read(1), self.hang_limit)
                call.client_disconnected = True
            except TimeoutError:
                pass
            return
        if kind == "barrier":
            assert self._in_flight_changed is not None
            async with self._in_flight_changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._in_flight_changed.wait_for(lambda: self.in_flight >= behaviour.barrier),
                        self.barrier_timeout,
                    )
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        if kind == "status":
            extra = {"Retry-After": behaviour.retry_after} if behaviour.retry_after else {}
            await self._send(writer, behaviour.status, {"error": {"message": "scripted"}}, extra)
        elif kind == "drop":
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{"choices": [')
            await writer.drain()
        elif kind == "malformed":
            await self._send_raw(writer, 200, b"{this is not json")
        elif kind == "empty_choices":
            await self._send(writer, 200, {"model": self.model, "choices": []})
        elif kind == "no_content":
            await self._send(writer, 200, {"choices": [{"message": {"role": "assistant"}}]})
        else:
            await self._send(writer, 200, self._completion(body, behaviour))

    def _completion(self, body: dict[str, Any], behaviour: Behaviour) -> dict[str, Any]:
        agent = body.get("user")
        content = behaviour.content or (self.responder(body) if self.responder else None)
        content = content if content is not None else f"Proposal by {agent}.\nUse a token bucket per client."
        prompt_tokens = sum(len(m.get("content", "").split()) for m in body.get("messages", []))
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": body.get("model", self.model),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": behaviour.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(content.split()),
                "total_tokens": prompt_tokens + len(content.split()),
            },
        }

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        code: int,
        payload: dict[str, Any],
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        await self._send_raw(writer, code, json.dumps(payload).encode(), extra_headers)

    async def _send_raw(
        self,
        writer: asyncio.StreamWriter,
        code: int,
        data: bytes,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        head = [f"HTTP/1.1 {code} X", "Content-Type: application/json", f"Content-Length: {len(data)}"]
        head += [f"{k}: {v}" for k, v in (extra_headers or {}).items()]
        head.append("Connection: close")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        await writer.drain()

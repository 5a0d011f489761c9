"""A latency-emulating OpenAI-compatible server, modelled on vLLM's scheduling.

Each request waits for one of `max_num_seqs` running slots (a FIFO queue, like vLLM's
waiting queue), then pays a prefill cost per prompt token plus the time to first token,
then `per_token` seconds per generated token. Replies carry `usage`; `stream: true`
answers with server-sent events, token by token. `/stats` reports what the server saw:
per request its arrival, admission and finish times (server clock: time.time()), and the
peak number of requests running and waiting.

    python -m bench.emulator --port 8000 --ttft 0.2 --per-token 0.01 --max-num-seqs 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass(frozen=True)
class LatencyModel:
    ttft: float = 0.2  # seconds before the first token, after prefill
    per_token: float = 0.01  # seconds per generated token (100 tokens/s per sequence)
    per_prompt_token: float = 0.0002  # prefill cost
    output_tokens: int = 100  # tokens generated unless max_tokens is lower
    max_num_seqs: int = 16  # sequences running at once; the rest wait in FIFO order

    def service_seconds(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.per_prompt_token + self.ttft + completion_tokens * self.per_token


@dataclass
class Served:
    user: str | None  # the OpenAI `user`: the pipeline's call id, within its deliberation
    arrived: float
    admitted: float = 0.0
    finished: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    task: str = ""  # the line after "Task:" in the prompt (agents/prompts.py): whose call it is


def stated_task(messages: list[Any]) -> str:
    """The task a prompt of this project states, on the line after "Task:"."""
    for message in messages:
        content = str(message.get("content", "")) if isinstance(message, dict) else ""
        _, found, after = content.partition("Task:\n")
        if found:
            return after.split("\n", 1)[0]
    return ""


@dataclass
class Stats:
    requests: list[Served] = field(default_factory=list)
    running: int = 0
    waiting: int = 0
    max_running: int = 0
    max_waiting: int = 0


class Emulator:
    def __init__(self, model: LatencyModel, name: str = "emulated-model") -> None:
        self.model = model
        self.name = name
        self.stats = Stats()
        self._slots: asyncio.Semaphore | None = None

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/models", self.models),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/stats", self.report),
                Route("/stats/reset", self.reset, methods=["POST"]),
                Route("/health", lambda request: Response("ok")),
            ]
        )

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": self.name, "object": "model"}]})

    async def report(self, request: Request) -> JSONResponse:
        stats = self.stats
        return JSONResponse(
            {
                "max_num_seqs": self.model.max_num_seqs,
                "max_running": stats.max_running,
                "max_waiting": stats.max_waiting,
                "requests": [asdict(r) for r in stats.requests],
            }
        )

    async def reset(self, request: Request) -> JSONResponse:
        self.stats = Stats(running=self.stats.running, waiting=self.stats.waiting)
        return JSONResponse({"reset": True})

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        task = stated_task(body.get("messages", []))
        served = Served(user=body.get("user"), arrived=time.time(), task=task)
        self.stats.requests.append(served)
        served.prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        served.completion_tokens = min(int(body.get("max_tokens") or 10**9), self.model.output_tokens)
        if body.get("stream"):
            return StreamingResponse(self._stream(served), media_type="text/event-stream")
        async with self._slot(served):
            await asyncio.sleep(self.model.service_seconds(served.prompt_tokens, served.completion_tokens))
        return JSONResponse(self._completion(served))

    def _slot(self, served: Served) -> _Slot:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.model.max_num_seqs)
        return _Slot(self, self._slots, served)

    async def _stream(self, served: Served) -> AsyncIterator[bytes]:
        async with self._slot(served):
            model = self.model
            await asyncio.sleep(served.prompt_tokens * model.per_prompt_token + model.ttft)
            for _ in range(served.completion_tokens):
                chunk: dict[str, Any] = {"object": "chat.completion.chunk", "model": self.name}
                chunk["choices"] = [{"index": 0, "delta": {"content": "tok "}, "finish_reason": None}]
                yield f"data: {json.dumps(chunk)}\n\n".encode()
                await asyncio.sleep(model.per_token)
        final: dict[str, Any] = {"object": "chat.completion.chunk", "model": self.name}
        final["usage"] = self._usage(served)
        final["choices"] = [{"index": 0, "delta": {}, "finish_reason": self._finish(served)}]
        yield f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode()

    def _usage(self, served: Served) -> dict[str, int]:
        return {
            "prompt_tokens": served.prompt_tokens,
            "completion_tokens": served.completion_tokens,
            "total_tokens": served.prompt_tokens + served.completion_tokens,
        }

    def _finish(self, served: Served) -> str:
        return "length" if served.completion_tokens < self.model.output_tokens else "stop"

    def _completion(self, served: Served) -> dict[str, Any]:
        content = " ".join(["tok"] * served.completion_tokens)
        return {
            "id": f"chatcmpl-{len(self.stats.requests)}",
            "object": "chat.completion",
            "model": self.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": self._finish(served),
                }
            ],
            "usage": self._usage(served),
        }


class _Slot:
    """Wait in the queue for a running slot; count both, as vLLM's metrics do."""

    def __init__(self, emulator: Emulator, slots: asyncio.Semaphore, served: Served) -> None:
        self.stats = emulator.stats
        self.slots = slots
        self.served = served

    async def __aenter__(self) -> None:
        stats = self.stats
        queued = self.slots.locked()  # every running slot taken: this one waits
        if queued:
            stats.waiting += 1
            stats.max_waiting = max(stats.max_waiting, stats.waiting)
        try:
            await self.slots.acquire()
        finally:
            if queued:
                stats.waiting -= 1
        stats.running += 1
        stats.max_running = max(stats.max_running, stats.running)
        self.served.admitted = time.time()

    async def __aexit__(self, *exc: object) -> None:
        self.served.finished = time.time()
        self.stats.running -= 1
        self.slots.release()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.emulator", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--ttft", type=float, default=LatencyModel.ttft)
    parser.add_argument("--per-token", type=float, default=LatencyModel.per_token)
    parser.add_argument("--per-prompt-token", type=float, default=LatencyModel.per_prompt_token)
    parser.add_argument("--output-tokens", type=int, default=LatencyModel.output_tokens)
    parser.add_argument("--max-num-seqs", type=int, default=LatencyModel.max_num_seqs)
    args = parser.parse_args(argv)
    model = LatencyModel(
        args.ttft, args.per_token, args.per_prompt_token, args.output_tokens, args.max_num_seqs
    )
    uvicorn.run(Emulator(model).app(), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()

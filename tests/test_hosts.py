"""A call host's flow-run contexts (flows/hosts.py): the clients of a context are closed
only when no call is using them. Hydration is replaced by a stand-in that records when a
context's clients are closed; everything else is the host's own code, without Ray."""

from __future__ import annotations

import asyncio
import contextvars
from contextlib import AsyncExitStack
from typing import Any

import pytest

from flows import hosts


@pytest.fixture
def closed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    closed: list[str] = []

    async def hydrate(context_ref: Any) -> tuple[contextvars.Context, AsyncExitStack]:
        stack = AsyncExitStack()
        stack.callback(closed.append, context_ref)
        return contextvars.copy_context(), stack

    monkeypatch.setattr(hosts, "_hydrate", hydrate)
    monkeypatch.setattr(hosts, "MAX_CONTEXTS_PER_HOST", 2)
    return closed


def test_over_the_limit_the_oldest_idle_context_goes_not_one_in_use(closed: list[str]) -> None:
    async def scenario() -> None:
        host = hosts.CallHost(max_calls=10)
        async with host._using("a", "a"):  # a call of flow run a is running
            await host.prepare("b", ["b"])
            await host.prepare("c", ["c"])
            assert closed == ["b"]  # a is older, but in use
        await host.prepare("d", ["d"])
        assert closed == ["b", "a"]

    asyncio.run(scenario())


def test_a_released_flow_run_keeps_its_clients_until_its_last_call_ends(closed: list[str]) -> None:
    async def scenario() -> None:
        host = hosts.CallHost(max_calls=10)
        async with host._using("a", "a"):
            await host.release("a")
            assert closed == []
        assert closed == ["a"]
        await host.prepare("b", ["b"])
        await host.release("b")
        assert closed == ["a", "b"]

    asyncio.run(scenario())

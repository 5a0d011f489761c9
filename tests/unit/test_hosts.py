"""A call host's flow-run contexts (flows/runtime/hosts.py): the clients of a context are closed
only when no call is using them. Hydration is replaced by a stand-in that records when a
context's clients are closed; everything else is the host's own code, without Ray."""

from __future__ import annotations

import asyncio
import contextvars
from contextlib import AsyncExitStack
from typing import Any

import pytest
from prefect.context import SettingsContext
from prefect.settings import PREFECT_API_URL, temporary_settings

from agents.config import LLMEndpoint
from flows.hosting import MODEL_CALLS
from flows.runtime import hosts


@pytest.fixture
def closed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    closed: list[str] = []

    async def hydrate(
        context_ref: Any, settings: hosts.BuiltSettings, hooks: hosts.HostHooks
    ) -> tuple[contextvars.Context, AsyncExitStack]:
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


def serialized_settings(api_url: str) -> dict[str, Any]:
    with temporary_settings({PREFECT_API_URL: api_url}):
        context = SettingsContext.get()
        assert context is not None
        return {"settings_context": context.serialize(), "flow_run_context": {}}


def test_flow_runs_that_send_the_same_settings_share_one_built_copy() -> None:
    built = hosts.BuiltSettings(size=2)
    first = built.apply(serialized_settings("http://one:4200/api"))
    again = built.apply(serialized_settings("http://one:4200/api"))
    other = built.apply(serialized_settings("http://two:4200/api"))

    settings = first["settings_context"]["settings"]
    assert again["settings_context"]["settings"] is settings
    assert str(settings.api.url) == "http://one:4200/api"
    assert str(other["settings_context"]["settings"].api.url) == "http://two:4200/api"
    # What hydration builds from it is what it would build from the serialized form.
    assert SettingsContext(**first["settings_context"]).settings is settings
    assert (
        SettingsContext(**serialized_settings("http://one:4200/api")["settings_context"]).settings == settings
    )


def test_built_settings_keep_the_latest_few_and_pass_other_contexts_through() -> None:
    built = hosts.BuiltSettings(size=2)
    one = built.apply(serialized_settings("http://one:4200/api"))["settings_context"]["settings"]
    built.apply(serialized_settings("http://two:4200/api"))
    built.apply(serialized_settings("http://three:4200/api"))  # one is the oldest: dropped
    rebuilt = built.apply(serialized_settings("http://one:4200/api"))["settings_context"]["settings"]
    assert rebuilt is not one and rebuilt == one
    assert built.apply({"flow_run_context": {}}) == {"flow_run_context": {}}


@pytest.mark.parametrize(
    ("calls", "per_host", "slots", "pool", "expected"),
    [
        (5, 32, 128, 2, 1),  # a small council: one host
        (50, 32, 128, 2, 2),
        (100, 32, 128, 2, 2),  # never more than the pool
        (10, 32, 5, 2, 2),  # DELIBERATION_LLM_CONCURRENCY=10 over 2 hosts: both, or 5 would wait
        (2, 1, 128, 2, 2),
        (0, 32, 128, 2, 1),
    ],
)
def test_a_flow_run_takes_one_host_per_calls_per_host_and_enough_slots(
    calls: int, per_host: int, slots: int, pool: int, expected: int
) -> None:
    assert hosts.hosts_needed(calls, per_host, slots, pool) == expected


def test_hosts_start_on_demand_and_concurrent_flow_runs_spread_over_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[int] = []

    class Actor:  # stands in for the Ray actor class: records each host started
        @staticmethod
        def remote(slots: int, hosts: int, hooks: object) -> str:
            assert hosts == 3  # each host sizes an endpoint's own limit by the pool's size
            assert hooks == MODEL_CALLS  # and groups its calls as the application says
            started.append(slots)
            return f"host-{len(started) - 1}"

    pool = hosts.HostPool(size=3, cpus=0.05, max_calls=256, hooks=MODEL_CALLS)
    monkeypatch.setattr(pool, "_actor", Actor)
    first = pool.take(1)
    assert first == [0] and started == [86]  # one host, with its share of the 256 slots
    pool.give_back(first)
    assert pool.take(1) == [0] and len(started) == 1  # a later flow run reuses it
    assert pool.take(1) == [1] and len(started) == 2  # a concurrent one gets the next
    assert pool.take(3) == [2, 0, 1] and len(started) == 3
    assert [pool.host(i) for i in range(3)] == ["host-0", "host-1", "host-2"]


def endpoint(url: str, concurrency: int | None = None, name: str = "default") -> LLMEndpoint:
    return LLMEndpoint(
        name=name,
        url=url,
        model="m",
        api_key_env=None,
        api_key_secret=None,
        connect_timeout=1,
        read_timeout=1,
        concurrency=concurrency,
    )


def test_each_model_server_has_slots_of_its_own_its_limit_shared_over_the_hosts() -> None:
    async def scenario() -> None:
        host = hosts.CallHost(max_calls=10, hosts=3, hooks=MODEL_CALLS)
        default = host._slots_for({"endpoint": endpoint("http://a")})
        small = host._slots_for({"endpoint": endpoint("http://b", concurrency=4, name="small")})
        assert default._value == 10  # the process's share, as before
        assert small._value == 2  # 4 over 3 hosts, rounded up
        # One server, one limit, whatever the endpoint's name or model.
        assert host._slots_for({"endpoint": endpoint("http://b", concurrency=4, name="other")}) is small
        assert host._slots_for({"endpoint": None}) is not default  # a task without an endpoint

    asyncio.run(scenario())


def by_tenant(parameters: dict[str, Any]) -> tuple[str, int | None]:
    return parameters["tenant"], 6 if parameters["tenant"] == "small" else None


def test_the_hosts_group_slots_by_whatever_the_application_says() -> None:
    # The runtime knows no model endpoint: any application groups its calls its own way.
    async def scenario() -> None:
        host = hosts.CallHost(max_calls=10, hosts=2, hooks=hosts.HostHooks(slot_of=by_tenant))
        small = host._slots_for({"tenant": "small"})
        assert small._value == 3 and host._slots_for({"tenant": "small"}) is small
        assert host._slots_for({"tenant": "big"})._value == 10
        plain = hosts.CallHost(max_calls=7)  # no hooks: one group of the host's share
        assert plain._slots_for({"anything": 1}) is plain._slots_for({})
        assert plain._slots_for({})._value == 7

    asyncio.run(scenario())


def test_the_shipped_context_is_prefects_with_the_settings_serialized_once() -> None:
    from prefect.context import serialize_context

    calls = 0
    original = SettingsContext.serialize

    def counted(self: SettingsContext, include_secrets: bool = True) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return original(self, include_secrets=include_secrets)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SettingsContext, "serialize", counted)
        patch.setattr(hosts, "_SETTINGS", hosts.SerializedSettings())
        first, again = hosts.shipped_context(), hosts.shipped_context()
        assert first == again == serialize_context()
        assert calls == 2  # once for both shipped contexts, once for Prefect's own
        # Other settings (a changed one is a new object) are serialized afresh.
        with temporary_settings({PREFECT_API_URL: "http://elsewhere:4200/api"}):
            changed = hosts.shipped_context()
        assert calls == 3
        assert changed["settings_context"]["settings"]["api"]["url"] == "http://elsewhere:4200/api"

"""What the call hosts (flows/runtime/hosts.py) are told of this application: their sizes
from Settings (DELIBERATION_CALL_HOSTS, _CALLS_PER_HOST, _AGENT_CPUS, _LLM_CONCURRENCY),
Ray's address (RAY_ADDRESS), a slot group per model server, and one pool of model-server
clients per flow run on each host."""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable
from typing import Any

from agents.adapters.llm import ChatClientPool, shared_clients
from agents.config import LLMEndpoint
from agents.settings import Settings
from flows.runtime.hosts import HostHooks, HostSizing, host_pool


def sizing() -> HostSizing:
    return _sizing_of(frozenset(os.environ.items()))


@functools.lru_cache(maxsize=4)
def _sizing_of(environment: frozenset[tuple[str, str]]) -> HostSizing:
    """Built once per environment: each stage asks, and reading every setting from the
    environment was 2.7 % of a runner's CPU in a burst (BENCHMARKS.md)."""
    settings = Settings()
    return HostSizing(
        hosts=settings.call_hosts,
        cpus=settings.agent_cpus,
        max_calls=settings.llm_concurrency,
        calls_per_host=settings.calls_per_host,
    )


def ray_address() -> str | None:
    return Settings().ray_address


def model_server_slots(parameters: dict[str, Any]) -> tuple[str, int | None]:
    """The slots of the server a call goes to (by URL: one server, one limit, whatever model
    it serves), sized by the endpoint's own `concurrency` if it has one; calls without an
    endpoint share those of the default size."""
    endpoint = parameters.get("endpoint")
    if not isinstance(endpoint, LLMEndpoint):
        return "", None
    return endpoint.url, endpoint.concurrency


def model_clients() -> Callable[[], Awaitable[None]]:
    """One pool of model-server clients that every call of the flow run on this host shares."""
    clients = ChatClientPool()
    shared_clients.set(clients)
    return clients.aclose


MODEL_CALLS = HostHooks(
    sizing=sizing,
    ray_address=ray_address,
    slot_of=model_server_slots,
    setup=model_clients,
    # ask_model's module, its task-run name's, and the flow's (its run context travels
    # with each stage's calls): imported by the first calls of a burst, they were 12 % of
    # the hosts' CPU in it (BENCHMARKS.md).
    preload=("tasks.ask", "flows.calls", "flows.deliberate"),
)


def start_call_hosts() -> None:
    """Start this process's whole pool of call hosts and wait until they are up (a service
    does, before it takes work); Ray must be up."""
    pool = sizing()
    host_pool(pool.hosts, pool.cpus, pool.max_calls, MODEL_CALLS).start_all()

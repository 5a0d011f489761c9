"""A Ray task runner that keeps a whole council in flight: async task runs go to a few
long-lived async Ray actors (call hosts), each running many task runs on one event loop.

prefect-ray's RayTaskRunner makes every task run a plain Ray task: a worker process per call
in flight, `asyncio.run` per call, Prefect's context rebuilt per call, and a fresh
`ray.remote` function per submit: several times our CPU per call, and half a large council
out of flight (BENCHMARKS.md has the figures). prefect-ray has no worker-reusing mode, and
Prefect's proposal to cache the rebuilt context (PrefectHQ/prefect PR #20853) was closed;
so here:

- The flow's context is serialized once per flow run and put in Ray's object store; each
  host hydrates it once (settings, clients, the flow run context) and runs every call in a
  copy of it, so a task run costs what Prefect's engine costs in-process. Prefect's
  settings, nearly all of a hydration's cost, are built once per host for every flow run
  that sends the same ones.
- Each call sends only its task, its task-run id and its parameters.
- Hosts are actors with `max_concurrency` 1000 and a fraction of a CPU, spread over the
  cluster's nodes; a host that dies is restarted and its calls retried by Ray.
- A call is cancelled on its host's event loop (`ray.cancel` of an async actor task), so its
  HTTP request is dropped and its concurrency slot given back at once.

Sync tasks, and tasks that wait on other futures, still go to RayTaskRunner.submit.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib
import itertools
import json
import math
import threading
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Self
from uuid import UUID, uuid4

import ray
from prefect import Task
from prefect.client.schemas.objects import State
from prefect.context import (
    AsyncClientContext,
    FlowRunContext,
    SettingsContext,
    hydrated_context,
    serialize_context,
)
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger
from prefect.states import Cancelled, Crashed
from prefect.task_engine import AsyncTaskRunEngine
from prefect_ray import RayTaskRunner
from prefect_ray.task_runners import PrefectRayFuture

from flows.runtime.console import plain_console_logs
from flows.runtime.prefect_tls import share_prefect_tls_contexts
from flows.runtime.ray_setup import init_ray
from flows.runtime.task_runs import HostedTaskRun, runs_without_engine

HOST_CONCURRENCY = 1000  # Ray's default for async actors; a host waits on I/O
MAX_CONTEXTS_PER_HOST = 64  # flow runs a host keeps hydrated; the oldest idle is dropped first
MAX_SETTINGS_PER_HOST = 8  # distinct Prefect settings a host keeps built
MAX_TASKS_PER_HOST = 256  # tasks (one per stage of a flow run) a host keeps unpickled
# The message a call is cancelled with when its flow stops it (the deadline, a cancel).
STOPPED_BY_FLOW = "stopped by the flow"


@dataclass(frozen=True)
class HostSizing:
    """How many call hosts a process has, each with how much CPU, how many calls it has
    in flight in all, and how many calls a flow run gives each host."""

    hosts: int
    cpus: float
    max_calls: int
    calls_per_host: int


def _no_slot_group(parameters: dict[str, Any]) -> tuple[str, int | None]:
    return "", None


@dataclass(frozen=True)
class HostHooks:
    """What the application tells its call hosts; the hosts know nothing else of it. The
    functions travel to the Ray actors, so they are module-level (picklable by reference).

    - `sizing`: the pool's size, read in the flow run's process when it first needs hosts.
    - `ray_address`: where Ray is, when the task runner starts it (None: locally).
    - `slot_of`: a call's slot group, by its task's parameters, and the group's size over
      the whole pool (None: the host's share of `max_calls`); calls of one group wait for a
      slot before their task run starts.
    - `setup`: run once in each flow run's hydrated context on a host (what every call of
      that flow run shares there); it returns how to close it, awaited with the context.
    - `preload`: modules a host imports as it starts (those its tasks unpickle into), so
      that its first calls do not.
    """

    sizing: Callable[[], HostSizing] | None = None
    ray_address: Callable[[], str | None] | None = None
    slot_of: Callable[[dict[str, Any]], tuple[str, int | None]] = _no_slot_group
    setup: Callable[[], Callable[[], Awaitable[None]]] | None = None
    preload: tuple[str, ...] = ()


DEFAULT_SIZING = HostSizing(hosts=1, cpus=0.0, max_calls=HOST_CONCURRENCY, calls_per_host=HOST_CONCURRENCY)


class BuiltSettings:
    """Prefect's settings as a flow run's serialized context carries them, built once per
    distinct value. Building them re-reads every settings source (environment, profiles,
    .env, toml) for some 50 nested models, nearly all of a hydration's CPU (BENCHMARKS.md).
    The flow runs of one process send the same settings; a built one is only read, as
    Prefect reads the one of its own process. (Prefect PR #20853 proposed caching this in
    Prefect itself; it was closed.)"""

    def __init__(self, size: int = MAX_SETTINGS_PER_HOST) -> None:
        self._size = size
        self._built: OrderedDict[str, Any] = OrderedDict()

    def apply(self, serialized: dict[str, Any]) -> dict[str, Any]:
        """`serialized` with its settings built (a copy; the original is left as it was)."""
        context = serialized.get("settings_context")
        if not context or not isinstance(context.get("settings"), dict):
            return serialized
        key = json.dumps(context, sort_keys=True, default=str)
        built = self._built.pop(key, None)
        if built is None:
            # Validated as Prefect's hydration validates it, so the result is the same.
            built = SettingsContext(**context).settings
        self._built[key] = built
        while len(self._built) > self._size:
            self._built.popitem(last=False)
        return serialized | {"settings_context": context | {"settings": built}}


class SerializedSettings:
    """Prefect's settings serialized for a flow run's context, once per settings object:
    serializing them walks some 50 nested models, and every flow run of a process carries
    the same ones (a tenth of a service process's CPU, BENCHMARKS.md). Prefect's settings
    are immutable; a changed one (temporary_settings) is a new object."""

    def __init__(self) -> None:
        self._settings: Any = None
        self._profile = ""
        self._serialized: dict[str, Any] = {}

    def of(self, context: SettingsContext | None) -> dict[str, Any]:
        if context is None:
            return {}
        # Flow runs on several threads may both serialize at first: the same value.
        if context.settings is not self._settings or context.profile.name != self._profile:
            self._serialized = context.serialize()
            self._settings, self._profile = context.settings, context.profile.name
        return self._serialized


_SETTINGS = SerializedSettings()


class _Serialized:
    """Stands in for the SettingsContext while serialize_context runs, answering its one
    question (`serialize()`) with the settings already serialized. Setting the context
    variable to None does not do: SettingsContext.get() then answers the global one."""

    def __init__(self, serialized: dict[str, Any]) -> None:
        self._serialized = serialized

    def serialize(self) -> dict[str, Any]:
        return self._serialized


def shipped_context() -> dict[str, Any]:
    """prefect.context.serialize_context(), the settings serialized once (SerializedSettings)."""
    settings = _SETTINGS.of(SettingsContext.get())
    token = SettingsContext.__var__.set(_Serialized(settings))  # type: ignore[arg-type]
    try:
        return serialize_context()
    finally:
        SettingsContext.__var__.reset(token)


class ShippedTasks:
    """The tasks a host was sent, each once per stage of a flow run (an object in Ray's
    store) and unpickled once: a task's function travels by value, and unpickling it per
    call was a tenth of a host's CPU (BENCHMARKS.md, issue 31)."""

    def __init__(self, size: int = MAX_TASKS_PER_HOST) -> None:
        self._size = size
        self._tasks: OrderedDict[str, Task[Any, Any]] = OrderedDict()

    async def get(self, ref: Any) -> Task[Any, Any]:
        key = ref.hex()
        task = self._tasks.pop(key, None)
        if task is None:
            task = await ref
        self._tasks[key] = task
        while len(self._tasks) > self._size:
            self._tasks.popitem(last=False)
        return task


class CallHost:
    """Runs task runs of many flow runs on one event loop (a Ray actor), at most `max_calls`
    at once per slot group (`HostHooks.slot_of`: for model calls, per model server); the
    rest wait for a slot before their task run starts. A group with a size of its own has
    that many slots over the `hosts` of the pool (a share on each, as `max_calls` is the
    pool's share of the process's)."""

    def __init__(self, max_calls: int, hosts: int = 1, hooks: HostHooks | None = None) -> None:
        self._max_calls = max_calls
        self._hosts = hosts
        self._hooks = hooks or HostHooks()
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._contexts: OrderedDict[str, asyncio.Task[tuple[contextvars.Context, AsyncExitStack]]] = (
            OrderedDict()
        )
        # A context's clients must outlive every call using them: calls per flow run, and
        # the flow runs released while calls of theirs were still unwinding.
        self._calls: Counter[str] = Counter()
        self._released: set[str] = set()
        self._settings = BuiltSettings()
        self._tasks = ShippedTasks()
        plain_console_logs()  # a worker's stderr is a log file
        share_prefect_tls_contexts()  # each flow run's context makes two Prefect clients here
        for module in self._hooks.preload:
            importlib.import_module(module)

    async def run(
        self, run_key: str, context_box: list[Any], task_box: list[Any], task_run_id: UUID, parameters: Any
    ) -> tuple[State[Any], int]:
        """Run one task run to its final state; returns that state and the attempts made."""
        task = await self._tasks.get(task_box[0])
        async with self._using(run_key, context_box[0]) as context, self._slots_for(parameters):
            call = context.copy()
            run = call.run(_task_run, task, task_run_id, parameters)
            job = asyncio.create_task(run.run(STOPPED_BY_FLOW), context=call)
            try:
                await asyncio.shield(job)
            except asyncio.CancelledError:
                # Cancelled by the flow (ray.cancel): the call is told why.
                job.cancel(STOPPED_BY_FLOW)
                with contextlib.suppress(asyncio.CancelledError):
                    await job
        return run.final_state, run.run_count

    def _slots_for(self, parameters: dict[str, Any]) -> asyncio.Semaphore:
        """The slots of the group a call belongs to (HostHooks.slot_of)."""
        key, pool_size = self._hooks.slot_of(parameters)
        size = self._max_calls if pool_size is None else math.ceil(pool_size / self._hosts)
        if key not in self._slots:
            self._slots[key] = asyncio.Semaphore(size)
        return self._slots[key]

    async def ready(self) -> None:
        """Answered once the host is up: its process started and this module imported."""

    async def prepare(self, run_key: str, context_box: list[Any]) -> None:
        """Hydrate a flow run's context ahead of its first call."""
        await self._context(run_key, context_box[0])

    async def release(self, run_key: str) -> None:
        """Forget a flow run's context; its clients are closed once no call uses them."""
        if self._calls[run_key]:
            self._released.add(run_key)
        else:
            await self._drop(run_key)

    @contextlib.asynccontextmanager
    async def _using(self, run_key: str, context_ref: Any) -> AsyncIterator[contextvars.Context]:
        context, _ = await self._context(run_key, context_ref)
        self._calls[run_key] += 1
        try:
            yield context
        finally:
            self._calls[run_key] -= 1
            if not self._calls[run_key]:
                del self._calls[run_key]
                if run_key in self._released:
                    self._released.discard(run_key)
                    await self._drop(run_key)

    async def _context(self, run_key: str, context_ref: Any) -> tuple[contextvars.Context, AsyncExitStack]:
        if run_key not in self._contexts:
            self._contexts[run_key] = asyncio.create_task(_hydrate(context_ref, self._settings, self._hooks))
            # Over the limit: drop the oldest contexts that no call is using (if none is
            # idle, the host keeps more for a while).
            idle = [key for key in self._contexts if key != run_key and not self._calls[key]]
            for key in idle[: max(0, len(self._contexts) - MAX_CONTEXTS_PER_HOST)]:
                await self._drop(key)
        self._contexts.move_to_end(run_key)
        return await self._contexts[run_key]

    async def _drop(self, run_key: str) -> None:
        hydration = self._contexts.pop(run_key, None)
        if hydration is not None:
            await _close(hydration)


async def _hydrate(
    context_ref: Any, settings: BuiltSettings, hooks: HostHooks
) -> tuple[contextvars.Context, AsyncExitStack]:
    """Prefect's context of a flow run, entered once in a context of its own: settings,
    the flow run context, one Prefect client and what the application sets up for the
    flow run's calls on this host (HostHooks.setup); closed with it."""
    serialized = settings.apply(await context_ref)
    context = contextvars.copy_context()
    stack = AsyncExitStack()
    context.run(stack.enter_context, hydrated_context(serialized))
    # A task with `context=` runs in that very context, so what it sets stays set there.
    await asyncio.create_task(stack.enter_async_context(AsyncClientContext.get_or_create()), context=context)
    if hooks.setup is not None:
        stack.push_async_callback(context.run(hooks.setup))
    return context, stack


async def _close(hydration: asyncio.Task[tuple[contextvars.Context, AsyncExitStack]]) -> None:
    context, stack = await hydration
    await asyncio.create_task(stack.aclose(), context=context)


def _task_run(
    task: Task[Any, Any], task_run_id: UUID, parameters: dict[str, Any]
) -> HostedTaskRun | _EngineRun:
    """The driver of one task run, chosen in its flow run's context: the hosted one where
    the task allows it (flows/runtime/task_runs.py), Prefect's engine otherwise."""
    if runs_without_engine(task):
        return HostedTaskRun(task, task_run_id, parameters)
    return _EngineRun(task, task_run_id, parameters)


class _EngineRun:
    """A task run driven by Prefect's AsyncTaskRunEngine."""

    def __init__(self, task: Task[Any, Any], task_run_id: UUID, parameters: dict[str, Any]) -> None:
        self._engine = AsyncTaskRunEngine[Any, Any](task=task, parameters=parameters)
        self._task_run_id = task_run_id

    @property
    def final_state(self) -> State[Any]:
        return self._engine.state

    @property
    def run_count(self) -> int:
        return self._engine.task_run.run_count if self._engine.task_run else 0

    async def run(self, stopped_by: str) -> None:
        # prefect.task_engine.run_task_async, keeping the engine to read the run count.
        engine = self._engine
        async with engine.start(task_run_id=self._task_run_id):
            try:
                while engine.is_running():
                    await engine.wait_until_ready()
                    async with (
                        engine.asset_context(),
                        engine.run_context(),
                        engine.transaction_context() as txn,
                    ):
                        await engine.call_task_fn(txn)
            except asyncio.CancelledError as exc:
                if exc.args != (stopped_by,):
                    raise  # the loop closing, say: the engine records a crash
                # Stopped by its flow wherever it was (its request, a retry's wait): it ends
                # Cancelled, where a bare cancel reached the engine as a crash, logged on the
                # task run's page as two ERROR lines before the flow's reason.
                await engine.set_state(Cancelled(message=stopped_by), force=True)


class HostFuture(PrefectRayFuture[Any]):
    """A task run on a call host; its object resolves to (final state, attempts)."""

    _attempts = 0
    _final_state: State[Any] | None

    @property
    def attempts(self) -> int:
        self.wait()
        return self._attempts

    def wait(self, timeout: float | None = None) -> None:
        if self._final_state is not None:
            return
        try:
            state, self._attempts = ray.get(self.wrapped_future, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            return
        except ray.exceptions.RayError as exc:  # cancelled, or the host died for good
            state = Crashed(message=f"the call host did not finish it: {type(exc).__name__}")
        self._final_state = state

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        self.wait(timeout)
        if self._final_state is None:
            raise TimeoutError(f"Task run {self.task_run_id} did not complete within {timeout} seconds")
        return super().result(raise_on_failure=raise_on_failure)

    def cancel(self) -> None:
        """Cancel the call on its host's event loop: its HTTP request is dropped and its
        concurrency slot given back, and the host goes on serving the other calls."""
        ray.cancel(self.wrapped_future)


class RayTaskFuture(PrefectRayFuture[Any]):
    """A task run as a plain Ray task (sync tasks: run_tests)."""

    def cancel(self) -> None:
        """Kill the worker process running it: a sync task cannot be interrupted otherwise."""
        ray.cancel(self.wrapped_future, force=True)


def prepare_call_hosts(calls: int | None = None) -> None:
    """In a flow run on a HostedRayTaskRunner: choose its call hosts for stages of up to
    `calls` calls (None: every host) and have them load this run's context while the flow
    does other work (see HostedRayTaskRunner.prepare)."""
    context = FlowRunContext.get()
    if context is not None and isinstance(context.task_runner, HostedRayTaskRunner):
        used, pool_size = context.task_runner.prepare(calls)
        stage = f"stages of up to {calls} calls" if calls is not None else "every host"
        get_run_logger().info("model calls on %d of up to %d call hosts (%s)", used, pool_size, stage)


def hosts_needed(calls: int, calls_per_host: int, slots_per_host: int, pool_size: int) -> int:
    """Hosts for a flow run whose stages have up to `calls` calls: one per `calls_per_host`,
    and enough that their slots (each host has a share of the process's calls in flight)
    hold every call; at least one, at most the pool."""
    wanted = max(1, math.ceil(calls / calls_per_host), math.ceil(calls / slots_per_host))
    return min(pool_size, wanted)


class HostPool:
    """This process's call hosts in one Ray session: up to `size`, each started the first
    time a flow run needs it (a host is a process of its own; a small council needs
    one), with `max_calls` in flight in all, a share per host. Flow runs take the hosts the
    fewest running flow runs use, started ones first, so concurrent flow runs spread over
    the pool. The hosts are owned by this process, so they end with it."""

    def __init__(self, size: int, cpus: float, max_calls: int, hooks: HostHooks | None = None) -> None:
        self.size = size
        self._hooks = hooks or HostHooks()
        self.slots_per_host = math.ceil(max_calls / size)
        self._actor = ray.remote(CallHost).options(
            num_cpus=cpus,
            max_concurrency=HOST_CONCURRENCY,
            max_restarts=-1,
            max_task_retries=3,
            scheduling_strategy="SPREAD",
        )
        self._hosts: list[Any] = []
        self._users = [0] * size
        self._lock = threading.Lock()  # flow runs of one process may start in threads

    def take(self, count: int) -> list[int]:
        """The indexes of `count` hosts for one flow run, started if need be; give them back
        with `give_back` when the flow run ends."""
        with self._lock:
            chosen = sorted(range(self.size), key=lambda i: (self._users[i], i))[:count]
            for index in chosen:
                self._users[index] += 1
            self._start(max(chosen) + 1)
            return chosen

    def host(self, index: int) -> Any:
        return self._hosts[index]

    def start_all(self) -> None:
        """Start every host now and wait until each is up. A service starts its hosts
        before it takes work: each is a process that imports Prefect and the application
        (seconds of CPU), work that would otherwise fall on its first burst."""
        with self._lock:
            self._start(self.size)
            hosts = list(self._hosts)
        ray.get([host.ready.remote() for host in hosts])

    def _start(self, count: int) -> None:
        """Start hosts until the first `count` are started (the lock held)."""
        while len(self._hosts) < count:
            self._hosts.append(self._actor.remote(self.slots_per_host, self.size, self._hooks))

    def give_back(self, indexes: list[int]) -> None:
        with self._lock:
            for index in indexes:
                self._users[index] -= 1


_pools: dict[tuple[str, int, float, int, HostHooks], HostPool] = {}
_pools_lock = threading.Lock()


def host_pool(size: int, cpus: float, max_calls: int, hooks: HostHooks | None = None) -> HostPool:
    """This process's pool of call hosts in the current Ray session."""
    hooks = hooks or HostHooks()
    key = (ray.get_runtime_context().get_job_id(), size, cpus, max_calls, hooks)
    with _pools_lock:
        if key not in _pools:
            _pools[key] = HostPool(size, cpus, max_calls, hooks)
        return _pools[key]


class HostedRayTaskRunner(RayTaskRunner):
    """RayTaskRunner whose async task runs go to call hosts (see the module docstring).

    The one task runner of the `deliberate` flow, whoever runs it (the CLI, a deployment's
    worker, the service): unless Ray is already up in the process, it starts Ray as
    `init_ray` does, at `hooks.ray_address` (this checkout's code shipped to the cluster) or
    locally without the daemons one machine does not use, and leaves it up for the
    process's next flow runs. The hosts' number, CPUs and calls in flight come from
    `hooks.sizing` when the flow run first needs them."""

    def __init__(
        self,
        address: str | None = None,
        init_kwargs: dict[str, Any] | None = None,
        hooks: HostHooks | None = None,
    ) -> None:
        super().__init__(address=address, init_kwargs=init_kwargs)
        self.hooks = hooks or HostHooks()
        self._run_key = uuid4().hex
        self._context_box: list[Any] | None = None
        self._turn = itertools.count()
        self._pool: HostPool | None = None
        self._taken: list[int] = []
        self._used: list[Any] = []
        self._tasks: dict[int, tuple[Task[Any, Any], list[Any]]] = {}

    def duplicate(self) -> Self:
        return type(self)(self.address, self.init_kwargs, self.hooks)

    def __enter__(self) -> Self:
        if not ray.is_initialized():
            address = self.address or (self.hooks.ray_address() if self.hooks.ray_address else None)
            init_ray(address, **self.init_kwargs)
        return super().__enter__()

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other) and isinstance(other, HostedRayTaskRunner) and self.hooks == other.hooks

    def submit(  # type: ignore[override]
        self,
        task: Task[Any, Any],
        parameters: dict[str, Any],
        wait_for: Any = None,
        dependencies: Any = None,
    ) -> PrefectRayFuture[Any]:
        if not task.isasync or wait_for or any(isinstance(v, PrefectFuture) for v in parameters.values()):
            future = super().submit(task, parameters, wait_for, dependencies)
            return RayTaskFuture(task_run_id=future.task_run_id, wrapped_future=future.wrapped_future)
        context_box = self._ship_context()
        host = self._used[next(self._turn) % len(self._used)]
        task_run_id = uuid4()
        ref = host.run.remote(self._run_key, context_box, self._ship_task(task), task_run_id, parameters)
        return HostFuture(task_run_id=task_run_id, wrapped_future=ref)

    def prepare(self, calls: int | None = None) -> tuple[int, int]:
        """Choose this flow run's hosts for stages of up to `calls` calls (None: the whole
        pool) and have them hydrate its context now, in the background, so that the first
        calls start at once. Returns the hosts it uses
        and the pool's size."""
        context_box = self._ship_context(calls)
        for host in self._used:
            host.prepare.remote(self._run_key, context_box)
        return len(self._used), self._pool.size if self._pool is not None else 0

    def _ship_task(self, task: Task[Any, Any]) -> list[Any]:
        """The task in Ray's store, put there once (a stage's calls share one task object);
        boxed, so the host is handed the reference and fetches it once (ShippedTasks)."""
        shipped = self._tasks.get(id(task))
        if shipped is None:
            # The task is kept with its reference, so its id is not reused meanwhile.
            shipped = self._tasks[id(task)] = (task, [ray.put(task)])
        return shipped[1]

    def _ship_context(self, calls: int | None = None) -> list[Any]:
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        if self._context_box is None:
            # Boxed, so Ray hands the host the reference and the host fetches it once.
            self._context_box = [ray.put(shipped_context())]
            sizing = self.hooks.sizing() if self.hooks.sizing else DEFAULT_SIZING
            pool = host_pool(sizing.hosts, sizing.cpus, sizing.max_calls, self.hooks)
            count = pool.size
            if calls is not None:
                count = hosts_needed(calls, sizing.calls_per_host, pool.slots_per_host, pool.size)
            self._pool, self._taken = pool, pool.take(count)
            self._used = [pool.host(index) for index in self._taken]
        return self._context_box

    def __exit__(self, *exc_info: Any) -> None:
        for host in self._used:
            host.release.remote(self._run_key)
        if self._pool is not None:
            self._pool.give_back(self._taken)
        super().__exit__(*exc_info)

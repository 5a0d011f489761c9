"""A task run driven on a call host without Prefect's task engine, for the async tasks that
use none of what the engine adds around a call: no cache, no persisted result, no hooks,
no tags (so no tag concurrency limits), no assets, no printed logs.

Prefect 3 orchestrates task runs on the client: the API learns of a task run from the
`prefect.task-run.*` events its engine emits. This driver emits those same events through
Prefect's own `emit_task_run_state_change_event`, with the engine's states, retry and
timeout semantics and log lines, so the UI shows the same task run. What it leaves out is
per-call machinery those tasks never use: a transaction and a result record per attempt,
the task inputs and parameters walked for futures (twice), the run context and result store
rebuilt per attempt, a telemetry span, an asset context, a tag-concurrency round (BENCHMARKS.md,
issue 31: about half of a call host's CPU per call).

Two differences on purpose: no Pending state (a call waits for its slot before its task run
starts, flows/runtime/hosts.py, so Pending would only say "about to run", and it was a third
of the events the Prefect server stores and records per call); and no "Finished in state
Completed()" log line (the run's state says it).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import prefect.types._datetime
from prefect import Task
from prefect._internal.engine import resolve_custom_task_run_name
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State, TaskRun, TaskRunPolicy
from prefect.concurrency.context import ConcurrencyContext
from prefect.context import FlowRunContext, TagsContext, TaskRunContext
from prefect.events.schemas.events import Event
from prefect.logging.loggers import task_run_logger
from prefect.states import (
    AwaitingRetry,
    Cancelled,
    Completed,
    Failed,
    Retrying,
    Running,
    exception_to_crashed_state,
    exception_to_failed_state,
)
from prefect.task_engine import TaskRunTimeoutError
from prefect.utilities.engine import emit_task_run_state_change_event
from prefect.utilities.math import clamped_poisson_interval

_HOOKS = (
    "on_completion_hooks",
    "on_failure_hooks",
    "on_running_hooks",
    "on_rollback_hooks",
    "on_commit_hooks",
)


def runs_without_engine(task: Task[Any, Any]) -> bool:
    """Whether `task` uses nothing of the engine this driver leaves out (module docstring)."""
    return (
        type(task) is Task
        and task.isasync
        and not inspect.isasyncgenfunction(task.fn)
        # Compared by type: a task that crossed to a Ray actor carries a copy of NO_CACHE.
        and type(task.cache_policy) is type(NO_CACHE)
        and task.persist_result is False
        and task.result_storage is None
        and not task.log_prints
        and not task.tags
        and not any(getattr(task, hooks) for hooks in _HOOKS)
        and _in_a_flow_run()
        and not TagsContext.get().current_tags
    )


def _in_a_flow_run() -> bool:
    context = FlowRunContext.get()
    return context is not None and context.flow_run is not None


class HostedTaskRun:
    """One task run of `task` with `parameters`, driven to a final state by `run()`. Its
    `state` and `run_count` are what the engine's would be."""

    def __init__(self, task: Task[Any, Any], task_run_id: UUID, parameters: dict[str, Any]) -> None:
        flow_run_context = FlowRunContext.get()
        if flow_run_context is None or flow_run_context.flow_run is None:
            raise RuntimeError("a hosted task run needs its flow run's context")
        self.task = task
        self.parameters = parameters
        self._result_store = flow_run_context.result_store
        flow_run = flow_run_context.flow_run
        dynamic_key = str(uuid4())  # as the engine's for a task run away from its flow
        self.task_run = TaskRun(
            id=task_run_id,
            name=(
                resolve_custom_task_run_name(task, parameters)
                if task.task_run_name
                else f"{task.name}-{dynamic_key[:3]}"
            ),
            flow_run_id=flow_run.id,
            flow_run_run_count=flow_run.run_count,
            task_key=task.task_key,
            dynamic_key=dynamic_key,
            task_version=task.version,
            empirical_policy=TaskRunPolicy(
                retries=task.retries,
                retry_delay=task.retry_delay_seconds,
                retry_jitter_factor=task.retry_jitter_factor,
            ),
            tags=[],
            # The engine's task inputs name the futures among the parameters: a hosted
            # call's parameters hold none (HostedRayTaskRunner.submit).
            task_inputs={name: [] for name in parameters},
        )
        self.state: State[Any] | None = None
        self._last_event: Event | None = None
        self._retries = 0
        self.logger = task_run_logger(task_run=self.task_run, task=task)

    @property
    def run_count(self) -> int:
        return self.task_run.run_count

    @property
    def final_state(self) -> State[Any]:
        if self.state is None:
            raise RuntimeError(f"task run {self.task_run.name!r} has not started")
        return self.state

    async def run(self, stopped_by: str) -> None:
        """Run to a final state. A cancel whose message is `stopped_by` ends the run
        Cancelled with that message; any other cancel, or an error outside the task's own
        code, is a crash (recorded, then raised), as in the engine."""
        try:
            with (
                TaskRunContext(
                    task=self.task,
                    task_run=self.task_run,
                    parameters=self.parameters,
                    result_store=self._result_store,
                    persist_result=False,
                    client=get_client(),
                ),
                ConcurrencyContext(),
            ):
                self._set_state(Running())
                while not await self._attempt():
                    pass
        except asyncio.CancelledError as exc:
            if exc.args != (stopped_by,):
                await self._crash(exc)
                raise
            self._set_state(Cancelled(message=stopped_by))
        except BaseException as exc:
            await self._crash(exc)
            raise
        finally:
            self._log_finished()

    async def _attempt(self) -> bool:
        """One attempt; True once the run is in a final state, False when it retries."""
        # asyncio's timeout, unlike Prefect's timeout_async, tells its own expiry from a
        # cancel: the flow's cancel must stop the call, not time it out and retry it.
        timeout = asyncio.timeout(self.task.timeout_seconds)
        try:
            async with timeout:
                result = await self.task.fn(**self.parameters)
        except TimeoutError as exc:
            seconds = self.task.timeout_seconds
            expired = TaskRunTimeoutError(f"Scope timed out after {seconds} second(s).")
            return await self._failed(expired if timeout.expired() else exc, timed_out=True)
        except Exception as exc:
            return await self._failed(exc)
        self._set_state(Completed(data=result))
        return True

    async def _failed(self, exc: Exception, timed_out: bool = False) -> bool:
        """The engine's handle_exception and handle_timeout: any TimeoutError ends TimedOut."""
        if await self._retry(exc):
            return False
        if timed_out:
            if isinstance(exc, TaskRunTimeoutError):
                message = f"Task run exceeded timeout of {self.task.timeout_seconds} second(s)"
            else:
                message = f"Task run failed due to timeout: {exc!r}"
            self.logger.error(message)
            self._set_state(Failed(data=exc, message=message, name="TimedOut"))
        else:
            self._set_state(await exception_to_failed_state(exc, message="Task run encountered an exception"))
        return True

    async def _retry(self, exc: Exception) -> bool:
        """The engine's handle_retry and wait_until_ready: True once the next attempt runs."""
        if self._retries >= self.task.retries:
            exhausted = " - Retries are exhausted" if self.task.retries > 0 else ""
            self.logger.error(f"Task run failed with exception: {exc!r}{exhausted}", exc_info=True)
            return False
        if not await self._may_retry(exc):
            return False
        delay = self._delay()
        self.logger.info(
            "Task run failed with %s: %r - Retry %s/%s will start %s",
            "exception",
            exc,
            self._retries + 1,
            self.task.retries,
            f"{delay} second(s) from now" if delay else "immediately",
        )
        if delay:
            self._set_state(
                AwaitingRetry(scheduled_time=prefect.types._datetime.now("UTC") + timedelta(seconds=delay))
            )
            await asyncio.sleep(delay)
        self._set_state(Retrying())
        self._retries += 1
        return True

    async def _may_retry(self, exc: Exception) -> bool:
        condition = self.task.retry_condition_fn
        if condition is None:
            return True
        state: State[Any] = Failed(data=exc, message=f"Task run encountered unexpected exception: {exc!r}")
        try:
            should = condition(self.task, self.task_run, state)
            return bool(await should if inspect.isawaitable(should) else should)
        except Exception:
            self.logger.error(
                f"An error was encountered while running `retry_condition_fn` check "
                f"'{condition!r}' for task {self.task.name!r}",
                exc_info=True,
            )
            return False

    def _delay(self) -> float:
        delays = self.task.retry_delay_seconds
        if not delays:
            return 0.0
        delay = float(delays[min(self._retries, len(delays) - 1)] if isinstance(delays, Sequence) else delays)
        if self.task.retry_jitter_factor and delay > 0:
            delay = clamped_poisson_interval(delay, clamping_factor=self.task.retry_jitter_factor)
        return delay

    async def _crash(self, exc: BaseException) -> None:
        state = await exception_to_crashed_state(exc)
        self.logger.error(f"Crash detected! {state.message}")
        self._set_state(state)

    def _set_state(self, new_state: State[Any]) -> None:
        """The engine's set_state: the task run's denormalized fields, then the event."""
        last_state, run = self.state, self.task_run
        if last_state is not None and last_state.timestamp == new_state.timestamp:
            new_state.timestamp += timedelta(microseconds=1)
        new_state.state_details.task_run_id = run.id
        new_state.state_details.flow_run_id = run.flow_run_id
        run.state, run.state_id = new_state, new_state.id
        run.state_type, run.state_name = new_state.type, new_state.name
        # The run's times are Prefect's DateTime alias of the states' datetimes, as its engine sets them.
        if last_state is None:
            run.expected_start_time = run.start_time = new_state.timestamp  # type: ignore[assignment]
        elif last_state.is_running():
            run.total_run_time += new_state.timestamp - last_state.timestamp
        if new_state.is_running():
            run.run_count += 1
        if new_state.is_final() and run.start_time and not run.end_time:
            run.end_time = new_state.timestamp  # type: ignore[assignment]
        self._last_event = emit_task_run_state_change_event(
            task_run=run, initial_state=last_state, validated_state=new_state, follows=self._last_event
        )
        self.state = new_state

    def _log_finished(self) -> None:
        # The engine's last line, for runs that did not complete: "Finished in state
        # Completed()" only repeats the state the UI shows beside it, and was a tenth of a
        # host's CPU per call (the log record, its trip to the API) and a row per call there.
        if self.state is not None and not self.state.is_completed():
            self.logger.error(f"Finished in state {self.state}")

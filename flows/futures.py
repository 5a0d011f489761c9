"""The futures toolkit of a stage: one deadline for the whole deliberation, outcomes handed
on as each future finishes, finished futures settled into one typed value, and stragglers
cancelled with the reason recorded where the Prefect UI shows it (the run's state and logs).
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from prefect import get_client
from prefect.client.schemas.actions import LogCreate
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError, TerminationSignal
from prefect.futures import PrefectFuture
from prefect.states import Cancelled, State

from agents.errors import DeliberationCancelled, LLMError
from agents.models import AgentStatus, ErrorInfo
from flows.runtime.cancellation import CancelSignal

K = TypeVar("K")
T = TypeVar("T")
RUN_COUNT_SYNC_SECONDS = 10.0
# How long a cancelled task run may take to stop before its state is recorded.
CANCEL_GRACE_SECONDS = 5.0
# How often a stage waiting on its calls looks whether the deliberation was cancelled.
CANCEL_CHECK_SECONDS = 0.25


@runtime_checkable
class Cancellable(Protocol):
    """A future whose task run can be stopped: the task runner's futures know how (a call
    on a call host is cancelled on its event loop; a plain Ray task has its worker killed)."""

    def cancel(self) -> None:
        """Ask the task run to stop; returns at once."""


@dataclass(frozen=True)
class Deadline:
    """The deliberation's one deadline, shared by every stage, and its cancellation (a
    deadline brought forward on request): stages waiting on it stop at either."""

    seconds: float
    at: float  # time.monotonic()
    cancelled: CancelSignal | None = None

    @classmethod
    def start(
        cls, seconds: float, since: datetime | None = None, cancelled: CancelSignal | None = None
    ) -> Deadline:
        """`seconds` from now, or from `since` (when the deliberation first started)."""
        spent = (datetime.now(UTC) - since).total_seconds() if since is not None else 0.0
        return cls(seconds, time.monotonic() + seconds - max(0.0, spent), cancelled)

    def check(self) -> None:
        """Raise DeliberationCancelled if the deliberation was cancelled."""
        if self.cancelled is not None and self.cancelled.is_set:
            raise DeliberationCancelled(self.cancelled.reason)

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def reason(self) -> str:
        return f"deadline of {self.seconds:g} s reached"

    def error(self) -> ErrorInfo:
        return ErrorInfo(
            type="DeadlineExceeded",
            message=f"not finished within the deliberation deadline of {self.seconds:g} s",
            retryable=False,
        )


def collect(
    futures: dict[K, PrefectFuture[Any]],
    deadline: Deadline,
    on_done: Callable[[list[tuple[K, PrefectFuture[Any]]]], Any],
) -> list[K]:
    """Hand finished futures to `on_done` as soon as they finish, until the deadline: every
    future that finished while `on_done` was busy comes in the next call, in the order they
    finished, so what follows them (records, events) can be written together. Returns the
    keys of the futures still unfinished at the deadline, which are cancelled. If the
    deliberation is cancelled meanwhile, the unfinished ones are cancelled and
    DeliberationCancelled raised."""
    finished: queue.Queue[PrefectFuture[Any]] = queue.Queue()
    key_of = {future: key for key, future in futures.items()}
    for future in futures.values():
        future.add_done_callback(finished.put)
    done: set[K] = set()
    try:
        while len(done) < len(futures):
            deadline.check()
            try:
                batch = [finished.get(timeout=min(deadline.remaining(), CANCEL_CHECK_SECONDS))]
            except queue.Empty:
                if deadline.expired:
                    break
                continue
            while not finished.empty():
                batch.append(finished.get_nowait())
            done.update(key_of[future] for future in batch)
            on_done([(key_of[future], future) for future in batch])
    except TerminationSignal:
        # SIGTERM: from a worker cancelling the flow run (it does not wait for the
        # flow to notice), or the process is being stopped for another reason (a pod
        # evicted), which leaves the deliberation to be resumed. Only the API can tell.
        running = [f for key, f in futures.items() if key not in done]
        if deadline.cancelled is None or not deadline.cancelled.confirm():
            cancel(running, "the flow run's process was stopped")
            raise
        cancel(running, deadline.cancelled.reason)
        raise DeliberationCancelled(deadline.cancelled.reason) from None
    except BaseException as exc:
        # Cancelled, or the flow run is failing (say, an event could not be published):
        # leave no call running on behind it.
        why = str(exc) if isinstance(exc, DeliberationCancelled) else "the flow run failed"
        cancel([f for key, f in futures.items() if key not in done], why)
        raise
    unfinished = [key for key in futures if key not in done]
    cancel([futures[key] for key in unfinished], deadline.reason())
    return unfinished


@dataclass(frozen=True)
class Settled(Generic[T]):
    """A finished task run: its value if it completed with one, else the error."""

    status: AgentStatus
    value: T | None
    attempts: int
    error: ErrorInfo | None


def settle(future: PrefectFuture[Any], expected: type[T]) -> Settled[T]:
    """A finished future; a completed task run whose value is not an `expected` counts as
    failed."""
    value = future.result(raise_on_failure=False)
    state = future.state
    # A call host reports the attempts it made; otherwise ask the API.
    attempts: int | None = getattr(future, "attempts", None)
    if attempts is None:
        attempts = run_count(future, until=state)
    if state.is_completed():
        if isinstance(value, expected):
            return Settled(AgentStatus.COMPLETED, value, attempts, None)
        return Settled(AgentStatus.FAILED, None, attempts, _bad_result(value))
    status = AgentStatus.TIMED_OUT if state.name == "TimedOut" else AgentStatus.FAILED
    return Settled(status, None, attempts, _error_info(value, state.message or state.name or "failed"))


def _bad_result(value: object) -> ErrorInfo:
    return ErrorInfo(type="BadResult", message=f"unexpected task result {repr(value)[:200]}", retryable=False)


def _error_info(value: object, state_message: str) -> ErrorInfo:
    if isinstance(value, LLMError):
        return ErrorInfo(type=type(value).__name__, message=str(value), retryable=value.retryable)
    if isinstance(value, TimeoutError):
        return ErrorInfo(type="AttemptTimeout", message=state_message, retryable=True)
    if isinstance(value, BaseException):
        return ErrorInfo(type=type(value).__name__, message=str(value) or state_message, retryable=False)
    return ErrorInfo(type="Crashed", message=state_message, retryable=False)


def run_count(future: PrefectFuture[Any], until: State[Any] | None = None) -> int:
    """Attempts made, as the API records them. The API learns of task-run states through
    events, a moment after the future resolves: wait (briefly) until it shows `until`.
    Without `until`, answer at once (0 for a task run that never started)."""
    give_up = time.monotonic() + RUN_COUNT_SYNC_SECONDS
    with get_client(sync_client=True) as client:
        while True:
            try:
                task_run = client.read_task_run(future.task_run_id)
            except ObjectNotFound:
                task_run = None
            synced = until is None or (task_run is not None and task_run.state_type == until.type)
            if synced or time.monotonic() > give_up:
                return task_run.run_count if task_run is not None else 0
            time.sleep(0.1)


def cancel(futures: Sequence[PrefectFuture[Any]], reason: str) -> None:
    """Stop these task runs and record why, in their state and in their logs (the Prefect UI
    shows no message for a Cancelled state). Each is stopped as its future knows how (see
    Cancellable), and given CANCEL_GRACE_SECONDS in all to unwind (a model call drops its
    HTTP request and gives its concurrency slot back) before its state is recorded."""
    if not futures:
        return
    for future in futures:
        if isinstance(future, Cancellable):
            future.cancel()
    give_up = time.monotonic() + CANCEL_GRACE_SECONDS
    for future in futures:
        future.wait(timeout=max(0.0, give_up - time.monotonic()))
    context = FlowRunContext.get()
    flow_run_id = context.flow_run.id if context is not None and context.flow_run is not None else None
    with get_client(sync_client=True) as client:
        for future in futures:
            try:
                client.set_task_run_state(future.task_run_id, Cancelled(message=reason), force=True)
            except (ObjectNotFound, PrefectHTTPStatusError) as exc:
                # 404: the task run never started, so there is nothing to update.
                if isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code != 404:
                    raise
                continue
        client.create_logs(
            [
                LogCreate.model_validate(
                    {
                        "name": "deliberation",
                        "level": logging.WARNING,
                        "message": f"cancelled: {reason}; its request to the model server was dropped",
                        "timestamp": datetime.now(UTC),
                        "flow_run_id": flow_run_id,
                        "task_run_id": future.task_run_id,
                    }
                )
                for future in futures
            ]
        )

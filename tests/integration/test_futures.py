"""The futures toolkit (flows/futures.py): the deadline, collecting as futures finish,
settling them into one value, and what a cancelled task run shows in the API."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from prefect import get_client, task
from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId
from prefect.client.schemas.objects import StateType
from prefect.futures import PrefectFuture
from prefect.states import Cancelled, Completed, Failed, Running, State

from agents.errors import LLMRejected
from agents.models import AgentStatus
from flows.futures import Deadline, collect, settle


class ManualFuture(PrefectFuture[Any]):
    """A future the test finishes by hand, with the state it chooses."""

    attempts = 1

    def __init__(self, task_run_id: uuid.UUID | None = None) -> None:
        super().__init__(task_run_id or uuid.uuid4())
        self._callbacks: list[Callable[[PrefectFuture[Any]], None]] = []
        self._done = threading.Event()

    def finish(self, state: State[Any]) -> None:
        self._final_state = state
        self._done.set()
        for callback in self._callbacks:
            callback(self)

    def wait(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        self.wait(timeout)
        assert self._final_state is not None
        return self._final_state.result(raise_on_failure=raise_on_failure)

    def add_done_callback(self, fn: Callable[[PrefectFuture[Any]], None]) -> None:
        if self._done.is_set():
            fn(self)
        else:
            self._callbacks.append(fn)


def test_deadline_counts_down_and_says_why() -> None:
    deadline = Deadline.start(0.2)
    assert 0 < deadline.remaining() <= 0.2 and not deadline.expired
    time.sleep(0.25)
    assert deadline.expired and deadline.remaining() == 0.0
    assert deadline.reason() == "deadline of 0.2 s reached"
    assert deadline.error().type == "DeadlineExceeded" and not deadline.error().retryable


def keys_of(seen: list[list[str]]) -> Callable[[list[tuple[str, Any]]], None]:
    return lambda batch: seen.append([key for key, _ in batch])


def test_collect_hands_on_each_future_in_the_order_they_finish() -> None:
    futures = {name: ManualFuture() for name in "abc"}
    seen: list[list[str]] = []
    for delay, name in enumerate("cab", start=1):
        threading.Timer(0.05 * delay, futures[name].finish, [Completed(data=name)]).start()
    assert collect(futures, Deadline.start(5), keys_of(seen)) == []
    assert seen == [["c"], ["a"], ["b"]]


def test_futures_that_finish_while_the_last_batch_is_handled_come_together() -> None:
    futures = {name: ManualFuture() for name in "abcd"}
    seen: list[list[str]] = []
    futures["a"].finish(Completed(data="a"))

    def slow(batch: list[tuple[str, Any]]) -> None:
        if not seen:  # while the first is handled, three more finish
            for name in "dbc":
                futures[name].finish(Completed(data=name))
        seen.append([key for key, _ in batch])

    assert collect(futures, Deadline.start(5), slow) == []
    assert seen == [["a"], ["d", "b", "c"]]


def test_collect_keeps_what_finished_before_the_deadline(prefect_api: None) -> None:
    futures = {"fast": ManualFuture(), "slow": ManualFuture()}
    threading.Timer(0.1, futures["fast"].finish, [Completed(data=1)]).start()
    seen: list[list[str]] = []
    unfinished = collect(futures, Deadline.start(1.0), keys_of(seen))
    assert seen == [["fast"]] and unfinished == ["slow"]
    # The straggler's task run never started, so there is no state to set; its log says why.
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(task_run_id=LogFilterTaskRunId(any_=[futures["slow"].task_run_id])))
    assert [log.message for log in logs] == [
        "cancelled: deadline of 1 s reached; its request to the model server was dropped"
    ]


class CancellableFuture(ManualFuture):
    """A future that, as the task runner's do, stops its task run when cancelled."""

    def __init__(self, task_run_id: uuid.UUID | None = None) -> None:
        super().__init__(task_run_id)
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.finish(Cancelled())


@task
def a_call() -> None:
    """Only its task runs are used: created in the API as running, finished by hand."""


def running_task_run() -> uuid.UUID:
    with get_client(sync_client=True) as client:
        return client.create_task_run(a_call, None, uuid.uuid4().hex, state=Running()).id


def test_a_failing_callback_cancels_the_rest_and_raises(prefect_api: None) -> None:
    futures = {"first": CancellableFuture(running_task_run()), "other": CancellableFuture(running_task_run())}
    futures["first"].finish(Completed(data=1))

    def explode(batch: list[tuple[str, PrefectFuture[Any]]]) -> None:
        raise RuntimeError("publishing failed")

    with pytest.raises(RuntimeError, match="publishing failed"):
        collect(futures, Deadline.start(5), explode)
    # The one still running was stopped, and the API shows it cancelled, and why (its state
    # and its log); the one that had finished was left be.
    assert (futures["first"].cancelled, futures["other"].cancelled) == (False, True)
    other_id = futures["other"].task_run_id
    with get_client(sync_client=True) as client:
        other = client.read_task_run(other_id).state
        first = client.read_task_run(futures["first"].task_run_id).state
        logs = client.read_logs(LogFilter(task_run_id=LogFilterTaskRunId(any_=[other_id])))
    assert other is not None and (other.type, other.message) == (StateType.CANCELLED, "the flow run failed")
    assert first is not None and first.type is StateType.RUNNING  # as created: untouched
    assert [log.message for log in logs] == [
        "cancelled: the flow run failed; its request to the model server was dropped"
    ]


def test_settle_reads_value_status_and_error() -> None:
    done, wrong, refused = ManualFuture(), ManualFuture(), ManualFuture()
    done.finish(Completed(data="answer"))
    wrong.finish(Completed(data=42))
    refused.finish(Failed(data=LLMRejected("400 bad request")))
    settled = settle(done, str)
    assert (settled.status, settled.value, settled.error) == (AgentStatus.COMPLETED, "answer", None)
    settled = settle(wrong, str)
    assert settled.status is AgentStatus.FAILED and settled.error is not None
    assert settled.error.type == "BadResult"
    settled = settle(refused, str)
    assert settled.status is AgentStatus.FAILED and settled.error is not None
    assert (settled.error.type, settled.error.retryable) == ("LLMRejected", False)


def test_settle_calls_a_timed_out_attempt_timed_out() -> None:
    future = ManualFuture()
    future.finish(Failed(data=TimeoutError("slow"), name="TimedOut", message="exceeded 2 s"))
    settled = settle(future, str)
    assert settled.status is AgentStatus.TIMED_OUT and settled.error is not None
    assert (settled.error.type, settled.error.message) == ("AttemptTimeout", "exceeded 2 s")

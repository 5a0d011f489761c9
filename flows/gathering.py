"""Fan-out and gather: submit every agent to the task runner at once, then collect
outcomes as they finish until the deliberation's deadline."""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import ray
from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound, PrefectHTTPStatusError
from prefect.futures import PrefectFuture
from prefect.states import Cancelled, State
from prefect.tasks import exponential_backoff
from prefect_ray.context import remote_options
from prefect_ray.task_runners import PrefectRayFuture

from agents.errors import LLMError
from agents.llm import LLMEndpoint
from agents.models import AgentOutcome, AgentSpec, AgentStatus, DeliberationRequest, ErrorInfo, Proposal
from agents.settings import Settings
from tasks.propose import generate_proposal

K = TypeVar("K")
T = TypeVar("T")
Futures = dict[AgentSpec, PrefectFuture[Any]]
RUN_COUNT_SYNC_SECONDS = 10.0


def submit_proposals(
    deliberation_id: str,
    request: DeliberationRequest,
    council: Sequence[AgentSpec],
    endpoint: LLMEndpoint,
    settings: Settings,
) -> Futures:
    propose = generate_proposal.with_options(
        timeout_seconds=min(settings.attempt_timeout_seconds, request.deadline_seconds),
        retries=settings.max_retries,
        retry_delay_seconds=exponential_backoff(settings.retry_backoff_seconds),
    )
    # Agents wait on the model server, not the CPU: a fraction of a CPU each lets Ray
    # keep the whole council in flight.
    with remote_options(num_cpus=settings.agent_cpus):
        return {
            agent: propose.with_options(
                task_run_name=agent.agent_id.replace("agent-", "propose-", 1),
                tags={"llm", f"role:{agent.role.lower()}"},
            ).submit(
                deliberation_id=deliberation_id,
                request=request,
                agent=agent,
                endpoint=endpoint,
                llm_limit=settings.llm_concurrency_limit or None,
            )
            for agent in council
        }


def ensure_llm_limit(settings: Settings) -> None:
    """Create the global concurrency limit on LLM calls if it does not exist yet. An
    existing limit keeps the size an operator gave it (Prefect UI: Concurrency)."""
    if not settings.llm_concurrency_limit:
        return
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(settings.llm_concurrency_limit)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another flow run was first
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(
                        name=settings.llm_concurrency_limit, limit=settings.llm_concurrency
                    )
                )


@dataclass(frozen=True)
class Deadline:
    """The deliberation's one deadline, shared by every stage."""

    seconds: float
    at: float  # time.monotonic()

    @classmethod
    def start(cls, seconds: float) -> Deadline:
        return cls(seconds, time.monotonic() + seconds)

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def reason(self) -> str:
        return f"deadline of {self.seconds:g} s reached"


def collect(
    futures: dict[K, PrefectFuture[Any]], deadline: Deadline, on_done: Callable[[K, PrefectFuture[Any]], Any]
) -> list[K]:
    """Hand each future to `on_done` as soon as it finishes, until the deadline. Returns the
    keys of the futures still unfinished then, which are cancelled."""
    finished: queue.Queue[PrefectFuture[Any]] = queue.Queue()
    key_of = {future: key for key, future in futures.items()}
    for future in futures.values():
        future.add_done_callback(finished.put)
    done: set[K] = set()
    try:
        while len(done) < len(futures):
            try:
                future = finished.get(timeout=deadline.remaining())
            except queue.Empty:
                break
            key = key_of[future]
            done.add(key)
            on_done(key, future)
    except BaseException:
        # The flow run is failing (say, an event could not be published): leave no
        # task running on in Ray behind it.
        for key, future in futures.items():
            if key not in done:
                _cancel(future, "the flow run failed")
        raise
    unfinished = [key for key in futures if key not in done]
    for key in unfinished:
        _cancel(futures[key], deadline.reason())
    return unfinished


def gather_outcomes(
    futures: Futures,
    deadline: Deadline,
    on_outcome: Callable[[AgentOutcome], Any],
) -> list[AgentOutcome]:
    """Outcomes in council order. Each is handed to `on_outcome` as soon as it is known;
    agents unfinished at the deadline are cancelled and reported timed_out."""
    started = time.monotonic()
    outcomes: dict[AgentSpec, AgentOutcome] = {}

    def finished(agent: AgentSpec, future: PrefectFuture[Any]) -> None:
        outcomes[agent] = _outcome_of(agent, future, _elapsed_ms(started))
        on_outcome(outcomes[agent])

    for agent in collect(futures, deadline, finished):
        outcomes[agent] = AgentOutcome(
            agent_id=agent.agent_id,
            role=agent.role,
            status=AgentStatus.TIMED_OUT,
            attempts=run_count(futures[agent]),
            duration_ms=_elapsed_ms(started),
            error=deadline_error(deadline),
        )
        on_outcome(outcomes[agent])
    return [outcomes[agent] for agent in futures]


def deadline_error(deadline: Deadline) -> ErrorInfo:
    return ErrorInfo(
        type="DeadlineExceeded",
        message=f"not finished within the deliberation deadline of {deadline.seconds:g} s",
        retryable=False,
    )


def _elapsed_ms(since: float) -> int:
    return int((time.monotonic() - since) * 1000)


def settle(
    future: PrefectFuture[Any], expected: type[T]
) -> tuple[AgentStatus, T | None, int, ErrorInfo | None]:
    """A finished future as (status, value, attempts, error); a completed task run whose
    value is not an `expected` counts as failed."""
    value = future.result(raise_on_failure=False)
    state = future.state
    attempts = run_count(future, until=state)
    if state.is_completed():
        if isinstance(value, expected):
            return AgentStatus.COMPLETED, value, attempts, None
        return AgentStatus.FAILED, None, attempts, _bad_result(value)
    status = AgentStatus.TIMED_OUT if state.name == "TimedOut" else AgentStatus.FAILED
    return status, None, attempts, _error_info(value, state.message or state.name or "failed")


def _outcome_of(agent: AgentSpec, future: PrefectFuture[Any], duration_ms: int) -> AgentOutcome:
    status, proposal, attempts, error = settle(future, Proposal)
    return AgentOutcome(
        agent_id=agent.agent_id,
        role=agent.role,
        status=status,
        attempts=attempts,
        duration_ms=duration_ms,
        proposal=proposal,
        error=error,
    )


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
    Without `until`, answer at once (0 for a task run Ray never started)."""
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


def _cancel(future: PrefectFuture[Any], reason: str) -> None:
    """Stop a straggler (force: kill its worker, so its HTTP request stops too) and record
    the cancellation, which Prefect cannot see from inside a killed process."""
    if isinstance(future, PrefectRayFuture):
        ray.cancel(future.wrapped_future, force=True)
    with get_client(sync_client=True) as client:
        try:
            client.set_task_run_state(future.task_run_id, Cancelled(message=reason), force=True)
        except (ObjectNotFound, PrefectHTTPStatusError) as exc:
            # 404: Ray had not started it, so there is no task run to update.
            if isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code != 404:
                raise

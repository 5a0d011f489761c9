"""The stages' port to the models (agents.stages.Ask), as task runs: every call of a stage
submitted at once, each handed on as it finishes, stragglers cut at the deliberation's
deadline. Every stage goes through this one runner and the one task, `ask_model`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger

from agents.calls import finished_call, run_name
from agents.config import LLMEndpoint
from agents.models import AgentStatus, ChatCompletion, ModelCall, StageCall
from agents.settings import Settings
from flows.futures import Deadline, collect, run_count, settle
from flows.runtime import metrics
from tasks.ask import ask_model


def call_run_name(parameters: dict[str, Any]) -> str:
    """`ask_model`'s task run name, from its parameters where it runs (agents.calls.run_name):
    one task object then serves a whole stage."""
    return run_name(parameters["call"])


class CallRunner:
    """Runs a deliberation's model calls, stage by stage, within its one deadline. A call
    already in the ledger is not asked again: its record stands. Every new outcome is
    written to the ledger (`write_ledger`) before anyone else hears of it; outcomes known
    together (calls that finished together) are handed on together. Each member (and the
    chair) speaks through its own endpoint (`speakers`, by agent id)."""

    def __init__(
        self,
        deliberation_id: str,
        speakers: Mapping[str, LLMEndpoint],
        settings: Settings,
        deadline: Deadline,
        ledger: dict[str, StageCall],
        write_ledger: Callable[[list[StageCall]], Any],
    ) -> None:
        self.deliberation_id = deliberation_id
        self.speakers = speakers
        self.settings = settings
        self.deadline = deadline
        self.ledger = ledger
        self.write_ledger = write_ledger
        self._out: set[str] = set()  # the calls of the stage being asked not finished yet

    def __call__(
        self, calls: Sequence[ModelCall], on_calls: Callable[[list[StageCall]], Any] | None = None
    ) -> list[StageCall]:
        """Every call's record, in the order given. Records are handed to `on_calls` as soon
        as they are known (recorded ones first), several at once when they are known
        together; calls unfinished at the deadline are cancelled and timed_out. Raises
        DeliberationCancelled if the deliberation is cancelled before or meanwhile."""
        self.deadline.check()
        records: dict[str, StageCall] = {}

        def known(batch: list[StageCall]) -> None:
            new = [record for record in batch if record.call_id not in self.ledger]
            if new:
                self.write_ledger(new)
                self.ledger.update((record.call_id, record) for record in new)
            records.update((record.call_id, record) for record in batch)
            if on_calls is not None:
                on_calls(batch)

        recorded = [self.ledger[call.call_id] for call in calls if call.call_id in self.ledger]
        if recorded:
            known(recorded)
        fresh = [call for call in calls if call.call_id not in records]
        if fresh and self.deadline.expired:
            known(
                [finished_call(call, AgentStatus.TIMED_OUT, 0, error=self.deadline.error()) for call in fresh]
            )
        elif fresh:
            self._ask(fresh, known)
        return [records[call.call_id] for call in calls]

    def _ask(self, calls: Sequence[ModelCall], known: Callable[[list[StageCall]], None]) -> None:
        """Submit every call at once; hand each batch of finished ones on as it finishes, and
        the calls still out at the deadline as timed_out."""
        started = time.monotonic()
        by_id = {call.call_id: call for call in calls}
        ask = self._ask_model()
        for call in calls:
            metrics.IN_FLIGHT.labels(self.speakers[call.agent_id].url).inc()
        self._out = set(by_id)
        futures = {
            call.call_id: ask.submit(
                deliberation_id=self.deliberation_id,
                call=call,
                endpoint=self.speakers[call.agent_id],
                llm_limit=self.settings.llm_concurrency_limit or None,
            )
            for call in calls
        }

        def finished(batch: list[tuple[str, PrefectFuture[Any]]]) -> None:
            elapsed_ms = int((time.monotonic() - started) * 1000)
            settled = [(call_id, settle(future, ChatCompletion)) for call_id, future in batch]
            records = [
                finished_call(by_id[call_id], s.status, s.attempts, s.value, s.error, elapsed_ms)
                for call_id, s in settled
            ]
            self._counted(records)
            known(records)

        try:
            late = collect(futures, self.deadline, finished)
        except BaseException:  # cancelled meanwhile: what is still out leaves the gauge too
            for call_id in self._out:
                metrics.IN_FLIGHT.labels(self.speakers[by_id[call_id].agent_id].url).dec()
            self._out.clear()
            raise
        if late:
            elapsed_ms = int((time.monotonic() - started) * 1000)
            error = self.deadline.error()
            records = [
                finished_call(
                    by_id[call_id],
                    AgentStatus.TIMED_OUT,
                    run_count(futures[call_id]),
                    None,
                    error,
                    elapsed_ms,
                )
                for call_id in late
            ]
            self._counted(records)
            known(records)

    def _counted(self, records: list[StageCall]) -> None:
        """Finished calls off the in-flight gauge, and the answered ones' latency observed."""
        for record in records:
            self._out.discard(record.call_id)
            metrics.IN_FLIGHT.labels(self.speakers[record.agent_id].url).dec()
            if record.status is AgentStatus.COMPLETED:
                metrics.MODEL_CALL.labels(record.stage.value).observe(record.latency_ms / 1000)

    def _ask_model(self) -> Any:
        """`ask_model` with this deliberation's retries, and each attempt cut at the attempt
        timeout or the deadline, whichever comes first."""
        return ask_model.with_options(
            timeout_seconds=max(1.0, min(self.settings.attempt_timeout_seconds, self.deadline.remaining())),
            retries=self.settings.max_retries,
            # One number, with the task's jitter: the UI cannot show a list of delays.
            retry_delay_seconds=self.settings.retry_backoff_seconds,
            # Prefect calls it with `parameters=` (it reads the signature); its type stub
            # describes that as a protocol no plain function satisfies.
            task_run_name=call_run_name,  # type: ignore[arg-type]
        )


def ensure_llm_limit(settings: Settings) -> None:
    """Make the named global concurrency limit on model calls exist. An existing limit keeps
    the size an operator gave it (Prefect UI: Concurrency) unless DELIBERATION_LLM_CONCURRENCY
    is set, which resizes it; the run's log says which size applies."""
    name, size = settings.llm_concurrency_limit, settings.llm_concurrency
    if not name:
        return
    logger = get_run_logger()
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another flow run was first
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=size))
            return
        if existing.limit == size:
            return
        if "llm_concurrency" in settings.model_fields_set:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=size))
            logger.warning("concurrency limit %r resized from %d to %d slots", name, existing.limit, size)
        else:
            logger.info(
                "concurrency limit %r has %d slots (set DELIBERATION_LLM_CONCURRENCY to resize it)",
                name,
                existing.limit,
            )

"""What a flow run of `deliberate` sets up before its stages run, and how it ends: one sitting
of the council.

    plan the council, and who speaks through which model endpoint
    check every model endpoint and NATS      (bad configuration publishes nothing)
    a stored result stands                   (a rerun of a concluded deliberation, same request)
    with --run-code: check the code sandbox  (refused where a worker cannot isolate code)
    open the call ledger                     (a rerun reuses every call recorded)
    the ports the stages use: `ask` (model calls as task runs on Ray, each recorded in the
    ledger before it is handed on), `run_suites` (the tests as task runs), one deadline

and at the end: the result concluded, stored (key-value), then announced, and shown as
artifacts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from uuid import UUID

from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.states import State

from agents.adapters.nats import EventBus
from agents.conclusion import conclude, conclude_stopped
from agents.config import LLMEndpoint
from agents.context import fit_context, within_windows
from agents.errors import DeliberationCancelled
from agents.models import (
    AgentOutcome,
    AgentSpec,
    DeliberationRequest,
    DeliberationResult,
    DeliberationStatus,
    Verdict,
)
from agents.planning import largest_stage_calls, plan_council
from agents.settings import Settings
from agents.stages import Ballots
from flows.announcer import Announcer
from flows.calls import CallRunner, ensure_llm_limit
from flows.execution import SuiteRunner
from flows.futures import Deadline
from flows.report import report
from flows.runtime.cancellation import cancel_signal
from flows.runtime.hosts import prepare_call_hosts
from flows.runtime.preflight import connect_event_bus, resolve_speakers
from flows.runtime.run_hooks import before_announcing
from flows.runtime.sandbox_probe import check_sandbox

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


@dataclass
class Sitting:
    """One flow run's deliberation: the request as the models are shown it, the council, the
    ports its stages use, and where its outcomes go."""

    deliberation_id: str
    request: DeliberationRequest  # its context's budget fitted to the models' windows
    council: list[AgentSpec]
    speakers: dict[str, LLMEndpoint]  # by agent id, the chair's included
    bus: EventBus
    announce: Announcer
    logger: Logger
    stored: DeliberationResult | None = None  # concluded before: it stands
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # The stages' ports, once the ledger is open (never, when a stored result stands).
    calls: CallRunner | None = None
    suites: SuiteRunner | None = None

    @property
    def ask(self) -> CallRunner:
        assert self.calls is not None, "the ledger is not open"
        return self.calls

    @property
    def run_suites(self) -> SuiteRunner:
        assert self.suites is not None, "the ledger is not open"
        return self.suites

    @property
    def deadline(self) -> Deadline:
        return self.ask.deadline

    @property
    def constrains_json(self) -> dict[str, bool]:
        """By agent id: whether its server can hold an answer to a JSON schema."""
        return {agent_id: endpoint.constrains_json for agent_id, endpoint in self.speakers.items()}

    @property
    def ballots(self) -> Ballots:
        """Labels seeded by the deliberation's id; JSON from whose server can hold it."""
        return Ballots(seed=self.deliberation_id, as_json=self.constrains_json)

    @property
    def context_cut(self) -> list[str]:
        """What the prompts could not hold of the request's context, for `incomplete`."""
        return fit_context(self.request).gaps()

    def conclude(
        self, outcomes: list[AgentOutcome], verdict: Verdict | None, stage_ms: dict[str, int]
    ) -> DeliberationResult:
        return conclude(
            self.request,
            self.deliberation_id,
            outcomes,
            self.started_at,
            datetime.now(UTC),
            verdict,
            stage_ms,
            self.context_cut,
        )

    def conclude_cancelled(self, exc: DeliberationCancelled, stage_ms: dict[str, int]) -> DeliberationResult:
        """Concluded `cancelled`: the proposals made stand; every other agent's outcome is
        announced now (theirs were never announced)."""
        self.logger.warning("deliberation %s cancelled: %s", self.deliberation_id, exc)
        made = self.ask.ledger
        result = conclude_stopped(
            self.request,
            self.deliberation_id,
            DeliberationStatus.CANCELLED,
            str(exc),
            made,
            self.started_at,
            datetime.now(UTC),
            stage_ms,
            self.context_cut,
        )
        self.announce.outcomes([o for o in result.outcomes if o.agent_id not in made])
        return result

    def store_and_announce(self, result: DeliberationResult) -> None:
        """Stored, and its watcher told (the service's status record), before it is
        announced: whoever reacts to the event can read it. Then recorded as announced, so
        a later run that finds it stored does not announce it again."""
        self.bus.save_result(result)
        before_announcing(self.deliberation_id, result)
        self.announce.concluded(result)
        self.bus.mark_announced(self.deliberation_id)

    def report(self, result: DeliberationResult) -> State[DeliberationResult]:
        """The artifacts and the flow run's final state."""
        models = {agent_id: endpoint.model for agent_id, endpoint in self.speakers.items()}
        return report(result, self.request, models)


@contextmanager
def open_sitting(request: DeliberationRequest) -> Iterator[Sitting]:
    """Everything checked and opened for the stages, in this flow run; `stored` set instead
    (and announced, in case the run that stored it died before it did) when this
    deliberation was concluded before."""
    logger = get_run_logger()
    settings = Settings()
    deliberation_id = request.deliberation_id or str(flow_run.get_id())
    council = plan_council(request)
    # The hosts load this run's context while the endpoints are checked.
    prepare_call_hosts(largest_stage_calls(request, len(council)))
    speakers = resolve_speakers(settings, request)
    asked = request.digest()  # before its context is fitted to the models' windows
    request = fitted_to_windows(request, speakers, logger)
    with connect_event_bus(settings) as bus, cancel_signal(UUID(flow_run.get_id())) as cancelled:
        announce = Announcer(bus, deliberation_id, request.task_id or deliberation_id, logger)
        sitting = Sitting(deliberation_id, request, council, speakers, bus, announce, logger)
        sitting.stored = bus.load_result(deliberation_id)
        if sitting.stored is not None:
            # The stored result answers the request first made under this id, no other.
            bus.check_request(deliberation_id, asked)
            logger.info("deliberation %s was concluded before; its stored result stands", deliberation_id)
            before_announcing(deliberation_id, sitting.stored)
            # Announced by the run that stored it, unless that run died in between. Once
            # is what every subscriber sees: JetStream would drop a second copy from the
            # stream (the same Nats-Msg-Id), but plain subscribers would get it again.
            if not bus.was_announced(deliberation_id):
                announce.concluded(sitting.stored)
                bus.mark_announced(deliberation_id)
            yield sitting
            return
        if request.run_code:
            check_sandbox(settings.sandbox_limits())
        ledger = bus.open_ledger(deliberation_id, asked, datetime.now(UTC))
        if ledger.calls:
            logger.info("resuming %s: %d call(s) already made stand", deliberation_id, len(ledger.calls))
        sitting.started_at = ledger.started_at
        deadline = Deadline.start(request.deadline_seconds, since=ledger.started_at, cancelled=cancelled)
        sitting.calls = CallRunner(
            deliberation_id,
            speakers,
            settings,
            deadline,
            ledger.calls,
            write_ledger=partial(bus.record_calls, deliberation_id),
        )
        sitting.suites = SuiteRunner(deadline, settings.sandbox_limits(), request.context)
        ensure_llm_limit(settings)
        yield sitting


def fitted_to_windows(
    request: DeliberationRequest, speakers: dict[str, LLMEndpoint], logger: Logger
) -> DeliberationRequest:
    """The request with its context's budget within what every model's window holds, and
    why it was cut in the run's log."""
    fitted = within_windows(request, (endpoint.context_window for endpoint in speakers.values()))
    if fitted.context_tokens < request.context_tokens:
        smallest = min(
            (e for e in speakers.values() if e.context_window), key=lambda e: e.context_window or 0
        )
        logger.warning(
            "the context gets %d tokens per prompt, not %d: a quarter of the %d-token window of %s "
            "(endpoint %r)",
            fitted.context_tokens,
            request.context_tokens,
            smallest.context_window,
            smallest.model,
            smallest.name,
        )
    return fitted

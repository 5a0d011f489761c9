"""The deliberate flow.

    plan the council, and who speaks through which model endpoint
    check every model endpoint and NATS      (bad configuration publishes nothing)
    a stored result stands                   (a rerun of a concluded deliberation, same request)
    with --run-code: check the code sandbox  (refused where a worker cannot isolate code)
    open the call ledger                     (a rerun reuses every call recorded)
    propose: every agent at once, on Ray     (retries and per-attempt timeouts per call)
    gather until the deadline                (each outcome recorded, then published)
    if the quorum is met:
        review rounds: critique, revise      (each critique published)
        rank: anonymized peer ballots        (JSON where the server can; unreadable ones abstain)
        with --run-code: run each proposal's code against the others' tests, sandboxed
                         (the context's files beside it, read-only)
        judge: ballots + deterministic checks, winner with an explicit tie-break
        synthesize (optional)
    conclude, store the result (key-value), publish it last, show it as artifacts

A run that fails for a transient reason (a server away for a moment, a worker lost) is
retried by Prefect in the same flow run, repeating no finished call; a decided failure (a
missed quorum, bad configuration) stands.
Cancelled (the Prefect UI's Cancel, or the service's `cancel`): the stage in flight stops,
its calls' requests are dropped, the proposals made stand, and it concludes `cancelled`.

One deadline, from the deliberation's first start, covers every stage: what it cuts
short is recorded as missing.

`python -m flows.deliberate "TASK" ...` runs it from the command line (flows/deliberate/__main__.py).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import partial
from uuid import UUID

from prefect import flow
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.states import State
from pydantic import BaseModel

from agents.config import LLMEndpoint
from agents.context import within_windows
from agents.council import (
    conclude,
    conclude_stopped,
    largest_stage_calls,
    plan_council,
    request_digest,
)
from agents.errors import DeliberationCancelled
from agents.models import (
    MAX_DEADLINE_SECONDS,
    AgentOutcome,
    AgentSpec,
    AgentStatus,
    DeliberationRequest,
    DeliberationResult,
    DeliberationStatus,
    Stage,
    Verdict,
)
from agents.settings import Settings
from flows.announcer import Announcer
from flows.calls import CallRunner, ensure_llm_limit
from flows.clock import StageClock
from flows.execution import execute_proposals
from flows.futures import Deadline
from flows.report import report
from flows.runtime.cancellation import cancel_signal
from flows.runtime.hosts import HostedRayTaskRunner, prepare_call_hosts
from flows.runtime.preflight import connect_event_bus, resolve_speakers
from flows.runtime.retries import FLOW_RETRIES, FLOW_RETRY_DELAY_SECONDS, final, retried_if_transient
from flows.runtime.sandbox_probe import check_sandbox
from flows.stages import candidates_of, judge, propose, rank_proposals, review_rounds, synthesize


def deliberation_run_name() -> str:
    """`<task_id>-dev-qa-x2` (task id, roles, agents per role), to tell runs apart in the UI.
    Built from the raw parameters, before validation, so it never fails."""
    raw = flow_run.parameters.get("request")
    fields = raw.model_dump() if isinstance(raw, BaseModel) else raw if isinstance(raw, dict) else {}
    roles = fields.get("roles") or "all"
    if isinstance(roles, list):
        roles = "-".join(str(role) for role in roles)
    name = f"{roles}-x{fields.get('agents_per_role', 1)}".lower().replace(",", "-")
    return f"{fields['task_id']}-{name}" if fields.get("task_id") else name


@flow(
    name="deliberate",
    task_runner=HostedRayTaskRunner(),
    # A backstop only: it does not fire while the flow waits on Ray, so the deadline
    # is enforced by the CallRunner.
    timeout_seconds=MAX_DEADLINE_SECONDS + 600,
    # Transient failures only (flows/runtime/retries.py); the ledger makes a retry
    # repeat no finished call. A crashed run is resumed by running it again by its id.
    retries=FLOW_RETRIES,
    retry_delay_seconds=FLOW_RETRY_DELAY_SECONDS,
    flow_run_name=deliberation_run_name,
)
def deliberate(request: DeliberationRequest) -> State[DeliberationResult]:
    """Run a council of role agents on `request.task` and publish every outcome."""
    with retried_if_transient():
        logger = get_run_logger()
        settings = Settings()
        deliberation_id = request.deliberation_id or str(flow_run.get_id())
        council = plan_council(request)
        # The hosts load this run's context while the endpoints are checked.
        prepare_call_hosts(largest_stage_calls(request, len(council)))
        speakers = resolve_speakers(settings, request)
        models = {agent_id: endpoint.model for agent_id, endpoint in speakers.items()}
        asked = request_digest(request)  # before its context is fitted to the models' windows
        request = fitted_to_windows(request, speakers, logger)
        with connect_event_bus(settings) as bus, cancel_signal(UUID(flow_run.get_id())) as cancelled:
            announce = Announcer(bus, deliberation_id, request.task_id or deliberation_id, logger)
            stored = bus.load_result(deliberation_id)
            if stored is not None:
                # The stored result answers the request first made under this id, no other.
                bus.check_request(deliberation_id, asked)
                logger.info("deliberation %s was concluded before; its stored result stands", deliberation_id)
                announce.concluded(stored)  # in case the run that stored it died before this
                return final(report(stored, request, models))
            if request.run_code:
                check_sandbox(settings.sandbox_limits())

            ledger = bus.open_ledger(deliberation_id, asked, datetime.now(UTC))
            if ledger.calls:
                logger.info("resuming %s: %d call(s) already made stand", deliberation_id, len(ledger.calls))
            deadline = Deadline.start(request.deadline_seconds, since=ledger.started_at, cancelled=cancelled)
            runner = CallRunner(
                deliberation_id,
                speakers,
                settings,
                deadline,
                ledger.calls,
                write_ledger=partial(bus.record_calls, deliberation_id),
            )
            ensure_llm_limit(settings)
            clock = StageClock()
            try:
                with clock(Stage.PROPOSAL):
                    outcomes = propose(runner, request, council, announce.outcomes)
                verdict = None
                authors = [
                    a for a, o in zip(council, outcomes, strict=True) if o.status is AgentStatus.COMPLETED
                ]
                if len(authors) >= request.required_proposals:
                    verdict = review_and_judge(runner, request, authors, outcomes, announce, clock, settings)
                finished = datetime.now(UTC)
                result = conclude(
                    request, deliberation_id, outcomes, ledger.started_at, finished, verdict, clock.ms
                )
            except DeliberationCancelled as exc:
                logger.warning("deliberation %s cancelled: %s", deliberation_id, exc)
                result = conclude_stopped(
                    request,
                    deliberation_id,
                    DeliberationStatus.CANCELLED,
                    str(exc),
                    runner.ledger,
                    ledger.started_at,
                    datetime.now(UTC),
                    clock.ms,
                )
                announce.outcomes([o for o in result.outcomes if o.agent_id not in runner.ledger])
            # Stored before it is announced: whoever reacts to the event can read it.
            bus.save_result(result)
            announce.concluded(result)
        return final(report(result, request, models))


def fitted_to_windows(
    request: DeliberationRequest,
    speakers: dict[str, LLMEndpoint],
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
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


def review_and_judge(
    runner: CallRunner,
    request: DeliberationRequest,
    authors: list[AgentSpec],
    outcomes: list[AgentOutcome],
    announce: Announcer,
    clock: StageClock,
    settings: Settings,
) -> Verdict:
    """The stages after a quorum of proposals: review rounds, the anonymized ranking, the
    tests (with --run-code), the verdict, and the synthesis if asked for."""
    with clock(Stage.CRITIQUE):
        review = review_rounds(runner, request, authors, candidates_of(outcomes), announce.critiques)
    with clock(Stage.RANKING):
        ranking = rank_proposals(runner, request, authors, review.latest)
    execution = None
    if request.run_code:
        with clock("tests"):
            execution = execute_proposals(
                review.latest,
                runner.deadline,
                settings.sandbox_limits(),
                request.code_expected,
                request.context,
            )
    verdict = judge(request, review, ranking, execution)
    announce.ranked(verdict)
    if request.synthesize:
        with clock(Stage.SYNTHESIS):
            verdict = synthesize(runner, request, verdict, review.latest)
    return verdict

"""The deliberate flow.

    set up the sitting (flows/deliberate/sitting.py): the council and its model endpoints,
        NATS and every endpoint checked, the sandbox with --run-code, the call ledger;
        a deliberation concluded before keeps its stored result
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

Each stage is domain code (agents/stages.py) behind one port, `ask`: here the calls run as
task runs on Ray's call hosts, each recorded in the ledger before it is handed on.

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

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import State
from pydantic import BaseModel

from agents.errors import DeliberationCancelled
from agents.models import MAX_DEADLINE_SECONDS, DeliberationRequest, DeliberationResult, Stage
from agents.stages import (
    authors_of,
    candidates_of,
    execute_proposals,
    judge,
    propose,
    rank_proposals,
    review_rounds,
    synthesize,
)
from flows.clock import StageClock
from flows.deliberate.sitting import open_sitting
from flows.hosting import MODEL_CALLS
from flows.runtime.hosts import HostedRayTaskRunner
from flows.runtime.retries import FLOW_RETRIES, FLOW_RETRY_DELAY_SECONDS, final, retried_if_transient


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
    task_runner=HostedRayTaskRunner(hooks=MODEL_CALLS),
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
    with retried_if_transient(), open_sitting(request) as sitting:
        if sitting.stored is not None:
            return final(sitting.report(sitting.stored))
        request, council, announce = sitting.request, sitting.council, sitting.announce
        ask, deadline, clock = sitting.ask, sitting.deadline, StageClock()
        try:
            with clock(Stage.PROPOSAL):
                outcomes = propose(ask, request, council, announce.outcomes, sitting.constrains_json)
            authors, verdict = authors_of(council, outcomes), None
            if len(authors) >= request.required_proposals:
                with clock(Stage.CRITIQUE):
                    review = review_rounds(
                        ask,
                        deadline,
                        request,
                        authors,
                        candidates_of(outcomes),
                        announce.critiques,
                        sitting.constrains_json,
                    )
                with clock(Stage.RANKING):
                    ranking = rank_proposals(ask, deadline, request, authors, review.latest, sitting.ballots)
                execution = None
                if request.run_code:
                    with clock("tests"):
                        execution = execute_proposals(sitting.run_suites, deadline, request, review.latest)
                verdict = judge(request, review, ranking, execution)
                announce.ranked(verdict)
                if request.synthesize:
                    with clock(Stage.SYNTHESIS):
                        verdict = synthesize(ask, deadline, request, verdict, review.latest)
            result = sitting.conclude(outcomes, verdict, clock.ms)
        except DeliberationCancelled as exc:
            result = sitting.conclude_cancelled(exc, clock.ms)
        sitting.store_and_announce(result)
        return final(sitting.report(result))

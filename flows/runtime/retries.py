"""Flow-run retries for transient failures only.

Prefect 3.9 retries a failed flow run whenever `retries` allows (the server's
RetryFailedFlows rule); unlike tasks, flows take no retry condition (PrefectHQ/prefect#10671,
#11500). So the flow declares its retries, and a run that fails for a decided reason (a
missed quorum, bad configuration) lowers its own flow run's `retries` to the runs made
before it proposes Failed: the rule then lets the failure stand. A retry re-runs the flow
function in the same flow run, and the call ledger makes it repeat no finished call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.logging import get_logger
from prefect.runtime import flow_run
from prefect.states import State

from agents.errors import is_decided

FLOW_RETRIES = 2
# Long enough for NATS or a model server to come back from a restart.
FLOW_RETRY_DELAY_SECONDS = 10


def no_more_retries() -> None:
    """Let this flow run's failure stand: no retry is left. If the API cannot be told, the
    failure is retried, and decided again; it is not replaced by the API's error."""
    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(flow_run.get_id()))
            policy = run.empirical_policy.model_copy(update={"retries": max(run.run_count - 1, 0)})
            client.update_flow_run(run.id, empirical_policy=policy)
    except Exception as exc:
        get_logger("deliberation").warning("could not mark the failure final (it will be retried): %s", exc)


@contextmanager
def retried_if_transient() -> Iterator[None]:
    """Around a flow's body: an exception that is decided is not retried."""
    try:
        yield
    except Exception as exc:
        if is_decided(exc):
            no_more_retries()
        raise


def final(state: State[Any]) -> State[Any]:
    """The flow's final state; a Failed one is decided (the run concluded it), not retried."""
    if state.is_failed():
        no_more_retries()
    return state

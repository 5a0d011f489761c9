"""How a deliberation shows in the Prefect UI: its artifacts, and the flow run's final state."""

from __future__ import annotations

from collections.abc import Mapping

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.logging import get_run_logger
from prefect.states import Cancelled, Completed, Failed, State

from agents.models import DeliberationRequest, DeliberationResult, DeliberationStatus
from agents.report import artifact_key, markdown_report, outcome_rows


def report(
    result: DeliberationResult, request: DeliberationRequest, models: Mapping[str, str]
) -> State[DeliberationResult]:
    """The artifacts of a deliberation, keyed by its task so that the UI's Artifacts page
    shows each task's deliberations over time, and the flow run's final state, whose
    message is the deliberation's summary."""
    key = artifact_key(result.task_id)
    create_table_artifact(key=f"{key}-agents", table=outcome_rows(result), description=result.summary)
    create_markdown_artifact(
        key=key,
        markdown=markdown_report(result, request, models),
        description=f"Deliberation {result.deliberation_id}: {result.summary}",
    )
    get_run_logger().info("deliberation %s %s: %s", result.deliberation_id, result.status, result.summary)
    final = {DeliberationStatus.FAILED: Failed, DeliberationStatus.CANCELLED: Cancelled}
    return final.get(result.status, Completed)(message=result.summary, data=result)

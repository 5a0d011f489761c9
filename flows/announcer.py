"""What a deliberation tells the other services, as its stages produce it: each agent's
outcome, each critique, the ranking and the conclusion, as events on NATS JetStream."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from agents.adapters.nats import EventBus
from agents.events import Event, agent_event, deliberation_event, ranked_event, review_event
from agents.models import AgentOutcome, DeliberationResult, StageCall, Verdict


class Announcer:
    """Publishes one deliberation's events, each batch at once with its acks awaited. An
    event published before (by an earlier run of the same deliberation) is acknowledged as
    a duplicate and not stored again: the first copy stands."""

    def __init__(
        self,
        bus: EventBus,
        deliberation_id: str,
        task_id: str,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self._bus = bus
        self._id = deliberation_id
        self._task = task_id
        self._logger = logger

    def outcomes(self, outcomes: Sequence[AgentOutcome]) -> None:
        for outcome in outcomes:
            self._logger.info("%s %s after %d attempt(s)", outcome.agent_id, outcome.status, outcome.attempts)
        self._publish([agent_event(self._id, self._task, outcome) for outcome in outcomes])

    def critiques(self, critiques: Sequence[StageCall]) -> None:
        self._publish([review_event(self._id, self._task, critique) for critique in critiques])

    def ranked(self, verdict: Verdict) -> None:
        event = ranked_event(self._id, self._task, verdict.scores, verdict.ballots, verdict.winner)
        self._publish([event])

    def concluded(self, result: DeliberationResult) -> None:
        self._publish([deliberation_event(result)])

    def _publish(self, events: list[Event]) -> None:
        if not events:
            return
        for event, receipt in zip(events, self._bus.publish_all(events), strict=True):
            if receipt.duplicate:
                self._logger.debug(
                    "%s was already in %s at seq %d", event.msg_id, receipt.stream, receipt.seq
                )

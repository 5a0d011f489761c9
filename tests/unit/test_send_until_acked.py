"""The retry policy of every JetStream round trip that is safe to repeat (publishing with a
message id, the intake's status records, the ledger's keys): sent again after a lost
answer, at most PUBLISH_ATTEMPTS times; a refusal is not sent again."""

from __future__ import annotations

import asyncio

import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError

from agents.adapters.nats import publisher
from agents.adapters.nats.publisher import PUBLISH_ATTEMPTS, send_until_acked


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publisher, "PUBLISH_BACKOFF_SECONDS", 0.001)


def answers(*outcomes: object) -> tuple[list[int], object]:
    calls: list[int] = []

    async def send() -> object:
        calls.append(1)
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return calls, send


def test_a_lost_answer_is_asked_again_until_one_comes() -> None:
    calls, send = answers(NatsTimeoutError(), NoRespondersError(), "revision 7")
    assert asyncio.run(send_until_acked(send, "creating the status of d1")) == "revision 7"  # type: ignore[arg-type]
    assert len(calls) == 3


def test_after_the_last_attempt_the_last_error_is_raised() -> None:
    calls, send = answers(*[NatsTimeoutError()] * PUBLISH_ATTEMPTS)
    with pytest.raises(NatsTimeoutError):
        asyncio.run(send_until_acked(send, "reading the status of d1"))  # type: ignore[arg-type]
    assert len(calls) == PUBLISH_ATTEMPTS


def test_a_refusal_is_not_sent_again() -> None:
    calls, send = answers(APIError(code=503, description="stream full"), "never")
    with pytest.raises(APIError):
        asyncio.run(send_until_acked(send, "publishing d1.accepted"))  # type: ignore[arg-type]
    assert len(calls) == 1

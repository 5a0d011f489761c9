"""The code the task is about, through the real flow: part of what a deliberation id
stands for. Real nats-server, Ray, Prefect's engine and the fake model server."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from agents.adapters.nats import EventBus
from agents.council import request_digest
from agents.events import Event
from agents.models import ContextFile, DeliberationRequest
from agents.settings import bus_config_for
from flows.deliberate import deliberate
from tests.fake_llm import FakeLLMServer

pytestmark = pytest.mark.usefixtures("pipeline")
ReadEvents = Callable[[str], list[Event]]

MATHLIB = '''"""Small integer helpers."""


def gcd(a: int, b: int) -> int:
    return a if b == 0 else gcd(b, a % b)


def lcm(a: int, b: int) -> int:
    return a * b  # wrong unless a and b are coprime


def lcm_all(numbers: list[int]) -> int:
    result = 1
    for n in numbers:
        result = lcm(result, n)
    return result
'''


def request_about(mathlib: str, deliberation_id: str, **fields: object) -> DeliberationRequest:
    return DeliberationRequest.model_validate(
        {
            "task": "Fix lcm in mathlib.py: lcm(4, 6) must be 12",
            "roles": ["DEV", "QA", "ARCHITECT"],
            "rounds": 0,
            "context": [ContextFile(path="mathlib.py", content=mathlib)],
            "deliberation_id": deliberation_id,
            **fields,
        }
    )


@pytest.mark.parametrize("first_run", ["concluded", "unfinished"])
def test_a_rerun_with_other_context_under_the_same_id_is_refused(
    pipeline: FakeLLMServer, read_events: ReadEvents, nats_url: str, first_run: str
) -> None:
    deliberation_id = uuid.uuid4().hex
    first = request_about(MATHLIB, deliberation_id)
    if first_run == "concluded":
        assert deliberate(request=first, return_state=True).is_completed()
    else:  # as if the first run had died before its first call
        with EventBus.connect(bus_config_for(nats_url)) as bus:
            bus.open_ledger(deliberation_id, request_digest(first), datetime.now(UTC))
    calls, events = len(pipeline.calls), len(read_events(deliberation_id))

    other = request_about(MATHLIB.replace("a * b  #", "a * b // gcd(a, b)  #"), deliberation_id)
    state = deliberate(request=other, return_state=True)

    assert state.is_failed()
    assert f"deliberation {deliberation_id} was started with a different request" in str(state.message)
    assert len(pipeline.calls) == calls  # nothing asked
    assert len(read_events(deliberation_id)) == events  # nothing published

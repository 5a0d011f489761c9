"""The code the task is about, through the real flow: its files in every prompt the model
server sees, part of what a deliberation id stands for, and with --run-code beside each
proposal's code in the sandbox. Real nats-server, Ray, Prefect's engine and the fake
model server."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from agents.adapters.confine import isolation_problem
from agents.adapters.nats import EventBus
from agents.events import Event
from agents.models import ContextFile, DeliberationRequest, DeliberationResult
from agents.settings import bus_config_for
from flows.deliberate import deliberate
from tests.fake_llm import FakeLLMServer, ok

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
# The fix calls the module's own gcd without importing it: it is tested inside mathlib.
CORRECT_FIX = """Divide by the greatest common divisor:

```python
def lcm(a: int, b: int) -> int:
    return a * b // gcd(a, b)
```
"""
WRONG_FIX = """```python
def lcm(a: int, b: int) -> int:
    return max(a, b)
```
"""
QA_TESTS = """Tests against the project's module:

```python
from mathlib import gcd, lcm, lcm_all


def test_lcm_of_numbers_with_a_common_factor():
    assert lcm(4, 6) == 12 and gcd(4, 6) == 2


def test_lcm_all_uses_the_fixed_lcm():
    assert lcm_all([2, 3, 4]) == 12
```
"""


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
            bus.open_ledger(deliberation_id, first.digest(), datetime.now(UTC))
    calls, events = len(pipeline.calls), len(read_events(deliberation_id))

    other = request_about(MATHLIB.replace("a * b  #", "a * b // gcd(a, b)  #"), deliberation_id)
    state = deliberate(request=other, return_state=True)

    assert state.is_failed()
    assert f"deliberation {deliberation_id} was started with a different request" in str(state.message)
    assert len(pipeline.calls) == calls  # nothing asked
    assert len(read_events(deliberation_id)) == events  # nothing published


@pytest.mark.skipif(isolation_problem() is not None, reason=str(isolation_problem()))
def test_with_run_code_tests_importing_the_contexts_module_pass_against_the_correct_fix(
    pipeline: FakeLLMServer,
) -> None:
    pipeline.script("agent-dev-001", ok(CORRECT_FIX))
    pipeline.script("agent-qa-001", ok(QA_TESTS))
    pipeline.script("agent-architect-001", ok(WRONG_FIX))
    request = request_about(MATHLIB, uuid.uuid4().hex, run_code=True, expects="code")
    # A project conftest.py would take the sandbox's own: it is left out, and said so.
    project_conftest = ContextFile(path="conftest.py", content="raise SystemExit('not in the sandbox')\n")
    request = DeliberationRequest.model_validate(
        request.model_dump() | {"context": [*request.context, project_conftest]}
    )

    state = deliberate(request=request, return_state=True)
    result = state.result(raise_on_failure=False)

    assert isinstance(result, DeliberationResult), result
    checks = {s.agent_id: next(c for c in s.checks if c.name == "tests_pass") for s in result.scores}
    assert (checks["agent-dev-001"].score, checks["agent-dev-001"].detail) == (
        1.0,
        "2 of 2 tests by other members pass (agent-qa-001 2/2)",
    )
    assert checks["agent-architect-001"].score == 0.0
    assert result.winner is not None and result.winner.agent_id == "agent-dev-001"
    assert (
        "--run-code: context files left out of the sandbox, which has its own under those names: conftest.py"
        in result.incomplete
    )
    # The members saw the file too, every one of them in every call.
    assert len(pipeline.calls) == 6  # 3 proposals, 3 rankings
    assert all(MATHLIB.strip() in call.body["messages"][0]["content"] for call in pipeline.calls)

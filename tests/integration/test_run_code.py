"""`--run-code` through the real flow: proposals' code run against the other members' tests in
the sandbox, as task runs on a Ray worker; the pass rate decides where ballots cannot."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from agents.adapters.confine import isolation_problem
from agents.events import Event, RankedEvent
from agents.models import DeliberationRequest, DeliberationResult
from flows.deliberate import deliberate
from tests.fake_llm import FakeLLMServer, ok

pytestmark = [
    pytest.mark.usefixtures("pipeline"),
    pytest.mark.skipif(isolation_problem() is not None, reason=str(isolation_problem())),
]
ReadEvents = Callable[[str], list[Event]]

CORRECT = """The recursive definition, with a guard:

```python
def factorial(n: int) -> int:
    if n < 0:
        raise ValueError("n must be >= 0")
    return 1 if n < 2 else n * factorial(n - 1)
```
"""
# Wrong for n >= 4, with tests of its own that it passes: those must not count.
BUGGY_WITH_OWN_TESTS = """A loop:

```python
def factorial(n: int) -> int:
    if n < 0:
        raise ValueError("n must be >= 0")
    result = 1
    for k in range(2, min(n, 3) + 1):
        result *= k
    return result


def test_factorial_of_three():
    assert factorial(3) == 6
```
"""
QA_TESTS = """Tests for it:

```python
import pytest
from factorial import factorial


def test_small_values():
    assert [factorial(n) for n in range(6)] == [1, 1, 2, 6, 24, 120]


def test_negative_is_refused():
    with pytest.raises(ValueError):
        factorial(-1)
```
"""
# Would kill its test runner's parent, the Ray worker, if the sandbox let it.
HOSTILE = """```python
import os
import signal


def factorial(n: int) -> int:
    os.kill(os.getppid(), signal.SIGKILL)
    return 1
```
"""


def test_the_other_members_tests_pick_the_correct_code_when_every_ballot_abstains(
    pipeline: FakeLLMServer, read_events: ReadEvents
) -> None:
    pipeline.script("agent-dev-001", ok(BUGGY_WITH_OWN_TESTS))
    pipeline.script("agent-architect-001", ok(CORRECT))
    pipeline.script("agent-qa-001", ok(QA_TESTS))
    pipeline.script("agent-data-001", ok(HOSTILE))
    request = DeliberationRequest(
        task="Write a Python factorial function",
        roles=["DEV", "QA", "ARCHITECT", "DATA"],
        rounds=0,
        run_code=True,
        deliberation_id=uuid.uuid4().hex,
    )
    state = deliberate(request=request, return_state=True)
    result = state.result(raise_on_failure=False)
    assert isinstance(result, DeliberationResult), result

    checks = {s.agent_id: next(c for c in s.checks if c.name == "tests_pass") for s in result.scores}
    assert checks["agent-architect-001"].score == 1.0
    assert checks["agent-architect-001"].detail.startswith("3 of 3 tests by other members pass")
    # Only the other members' tests count: QA's two (its own passing test is not run).
    # Weighed by agreement: the one it fails, the correct code passes (1/2 of the solutions
    # agree with it), the one it passes, both do (1): 1 / 1.5.
    assert checks["agent-dev-001"].detail.startswith("1 of 2 tests by other members pass")
    assert checks["agent-dev-001"].score == pytest.approx(2 / 3, abs=1e-4)
    assert "by agreement 0.67" in checks["agent-dev-001"].detail
    assert "test_small_values (agent-qa-001)" in checks["agent-dev-001"].detail
    # The hostile code's signal was refused, so its tests failed; the worker lived on.
    assert checks["agent-data-001"].applicable and checks["agent-data-001"].score == 0.0
    # Tests only: no evidence of doing the task.
    assert checks["agent-qa-001"].score == 0.0 and "no Python solution" in checks["agent-qa-001"].detail
    assert all(ballot.abstained for ballot in result.ballots)
    assert result.winner is not None and result.winner.agent_id == "agent-architect-001"

    # Each run is a task run of the flow run, beside the probe.
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    names = {
        run.name: run.state_type.value
        for run in task_runs
        if run.name.endswith(".tests") or "." not in run.name
    }
    assert names == {
        "sandbox-probe": "COMPLETED",
        "agent-dev-001.tests": "COMPLETED",
        "agent-architect-001.tests": "COMPLETED",
        "agent-data-001.tests": "COMPLETED",
    }
    # The evidence is published with the ranking, for whoever reacts to it.
    [ranked] = [e for e in read_events(request.deliberation_id or "") if isinstance(e, RankedEvent)]
    assert ranked.winner == "agent-architect-001"
    assert {s.agent_id: next(c for c in s.checks if c.name == "tests_pass") for s in ranked.scores} == checks
    # QA proposed tests and no solution: its tests count apart, plainly (issue 33).
    independent = {
        s.agent_id: c.detail for s in ranked.scores for c in s.checks if c.name == "independent_tests"
    }
    assert independent["agent-architect-001"].startswith("2 of 2 tests by members without a solution")
    assert independent["agent-dev-001"].startswith("1 of 2 tests by members without a solution")


def test_a_sandbox_that_fails_on_the_workers_is_refused_before_anything_is_published(
    pipeline: FakeLLMServer, read_events: ReadEvents, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Python cannot start within 10 ms: the probe's run is cut on the worker.
    monkeypatch.setenv("DELIBERATION_SANDBOX_WALL_SECONDS", "0.01")
    deliberation_id = uuid.uuid4().hex
    request = DeliberationRequest(
        task="Write a function", roles=["DEV"], run_code=True, deliberation_id=deliberation_id
    )
    state = deliberate(request=request, return_state=True)
    assert state.is_failed()
    assert (
        "--run-code: the code sandbox does not work on a Ray worker: 1 of probe's tests gave no "
        "result (cut at the wall-clock limit of 0.01 s)" in str(state.message)
    )
    assert pipeline.calls == []
    assert read_events(deliberation_id) == []

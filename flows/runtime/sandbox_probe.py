"""The check made before a deliberation with `--run-code`: a known-good suite run the way
the proposals' code will be, so that the option is refused, before any model call or
event, where a worker cannot confine code."""

from __future__ import annotations

from agents.config import SandboxLimits
from agents.errors import ConfigurationError
from agents.evidence import SuiteRun, TestSuite
from flows.futures import Deadline, collect, settle
from tasks.run_tests import run_tests

PROBE_SECONDS = 120.0
_PROBE = TestSuite(
    candidate_id="sandbox-probe",
    solution="def answer():\n    return 42\n",
    tests={"probe": "from solution import *\n\n\ndef test_answer():\n    assert answer() == 42\n"},
    expected={"probe": 1},
)


def check_sandbox(limits: SandboxLimits) -> None:
    """Run a known-good suite on a Ray worker; raise ConfigurationError if it does not pass
    there, before any model call is made or anything is published."""
    future = run_tests.with_options(task_run_name="sandbox-probe").submit(_PROBE, limits)
    if collect({"probe": future}, Deadline.start(PROBE_SECONDS), lambda *_: None):
        why = f"no answer within {PROBE_SECONDS:g} s"
    else:
        settled = settle(future, SuiteRun)
        if settled.value is not None and settled.value.passed == {"probe": 1}:
            return
        run = settled.value
        if run is not None:
            why = run.detail or "; ".join(run.failures) or run.outcome
        else:
            why = settled.error.message if settled.error is not None else "the probe failed"
    raise ConfigurationError(f"--run-code: the code sandbox does not work on a Ray worker: {why}")

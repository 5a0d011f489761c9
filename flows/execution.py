"""Evidence by execution (`--run-code`): each proposal's code run against the other members'
tests, beside the request's context files, as `run_tests` task runs on Ray workers, all at
once until the deadline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prefect.futures import PrefectFuture

from agents.adapters.sandbox import left_out_of_sandbox
from agents.config import SandboxLimits
from agents.evidence import SuiteRun, agreement, check_tests_pass, plan_suites, tested_standing
from agents.models import CheckResult, ContextFile, Tested
from agents.ranking import Candidate
from flows.futures import Deadline, collect, settle
from tasks.run_tests import run_tests


@dataclass
class Execution:
    """The `tests_pass` check of each proposal, how the tests went for it, and what could
    not be run."""

    checks: dict[str, CheckResult] = field(default_factory=dict)
    tested: dict[str, Tested] = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)


def execute_proposals(
    candidates: Mapping[str, Candidate],
    deadline: Deadline,
    limits: SandboxLimits,
    code_expected: bool,
    context: Sequence[ContextFile] = (),
) -> Execution:
    """Every proposal with Python code run against the tests the other members wrote, with
    the context's files in its working directory."""
    deadline.check()
    suites = plan_suites({agent_id: candidate.content for agent_id, candidate in candidates.items()})
    runnable = {agent_id: suite for agent_id, suite in suites.items() if suite.runnable}
    runs: dict[str, SuiteRun] = {}
    execution = Execution()
    if shadowed := left_out_of_sandbox(context):
        execution.gaps.append(
            "--run-code: context files left out of the sandbox, which has its own under those names: "
            + ", ".join(shadowed)
        )

    def finished(batch: list[tuple[str, PrefectFuture[Any]]]) -> None:
        for agent_id, future in batch:
            settled = settle(future, SuiteRun)
            if settled.value is not None:
                runs[agent_id] = settled.value
            else:
                why = settled.error.message if settled.error else "failed"
                runs[agent_id] = SuiteRun(
                    candidate_id=agent_id, outcome="not_run", detail=f"the run failed: {why}"
                )

    futures = (
        {}
        if deadline.expired
        else {
            agent_id: run_tests.with_options(task_run_name=f"{agent_id}.tests").submit(
                suite, limits, list(context)
            )
            for agent_id, suite in runnable.items()
        }
    )
    late = collect(futures, deadline, finished) if futures else list(runnable)
    for agent_id in late:
        runs[agent_id] = SuiteRun(candidate_id=agent_id, outcome="not_run", detail=deadline.reason())
    # Each test weighed by how far the solutions agree with it (agents/evidence.py).
    agreed = agreement(runs.values())
    for agent_id in candidates:
        check = check_tests_pass(suites[agent_id], runs.get(agent_id), code_expected, agreed)
        execution.checks[agent_id] = check
        execution.tested[agent_id] = tested_standing(check, suites[agent_id], runs.get(agent_id), agreed)
        if agent_id in runs and runs[agent_id].outcome == "not_run":
            execution.gaps.append(f"tests of {agent_id}: {check.detail}")
    return execution

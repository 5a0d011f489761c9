"""The tests' port (agents.stages.RunSuites) for `--run-code`: each proposal's suite run as
a `run_tests` task run on a Ray worker, beside the request's context files, all at once
until the deadline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefect.futures import PrefectFuture

from agents.adapters.sandbox import left_out_of_sandbox
from agents.config import SandboxLimits
from agents.evidence import SuiteRun, TestSuite
from agents.models import ContextFile
from flows.futures import Deadline, collect, settle
from tasks.run_tests import run_tests


class SuiteRunner:
    """Runs a deliberation's suites in the sandbox, each as a task run, until its deadline."""

    def __init__(self, deadline: Deadline, limits: SandboxLimits, context: Sequence[ContextFile]) -> None:
        self.deadline = deadline
        self.limits = limits
        self.context = list(context)
        self.left_out = left_out_of_sandbox(context)

    def __call__(self, suites: Mapping[str, TestSuite]) -> dict[str, SuiteRun]:
        """A run for every suite: one whose task failed, or that is still out at the
        deadline, is `not_run` and says why."""
        runs: dict[str, SuiteRun] = {}

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

        futures = {
            agent_id: run_tests.with_options(task_run_name=f"{agent_id}.tests").submit(
                suite, self.limits, self.context
            )
            for agent_id, suite in suites.items()
        }
        for agent_id in collect(futures, self.deadline, finished):
            runs[agent_id] = SuiteRun(candidate_id=agent_id, outcome="not_run", detail=self.deadline.reason())
        return runs

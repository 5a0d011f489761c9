"""The stages' tests port (agents.stages.RunSuites) on the real sandbox in this process,
with no Ray and no deadline: for tests and benchmarks that play `execute_proposals` and
`judge` directly (tests/integration/test_user_tests.py, bench/humaneval.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from agents.adapters.sandbox import run_suite
from agents.config import SandboxLimits
from agents.evidence import SuiteRun, TestSuite


@dataclass
class LocalSandbox:
    """Every suite run in the sandbox, `workers` at a time."""

    limits: SandboxLimits
    workers: int = 1
    left_out: Sequence[str] = ()

    def __call__(self, suites: Mapping[str, TestSuite]) -> dict[str, SuiteRun]:
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            runs = pool.map(lambda suite: run_suite(suite, self.limits), suites.values())
            return dict(zip(suites, runs, strict=True))


class NoDeadline:
    """A deadline that never comes (agents.stages's Deadline port)."""

    expired = False

    def reason(self) -> str:
        return ""

    def check(self) -> None:
        pass

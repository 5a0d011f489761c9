"""run_tests: one proposal's code against the other members' tests, beside the request's
context files, in the sandbox, as one Prefect task run.

A sync task, so the Ray task runner runs it as a plain Ray task with one CPU on some
worker of the cluster, beside (never on) the call hosts' event loops; the confined child
processes (a candidate's process and a harness per author of tests) are that worker's.
Not retried: the same code gives the same verdict."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from agents.adapters.sandbox import run_suite
from agents.config import SandboxLimits
from agents.evidence import SuiteRun, TestSuite
from agents.models import ContextFile


@task(name="run_tests", cache_policy=NO_CACHE, persist_result=False, retries=0)
def run_tests(suite: TestSuite, limits: SandboxLimits, context: list[ContextFile] | None = None) -> SuiteRun:
    run = run_suite(suite, limits, context or [])
    passed, failed = sum(run.passed.values()), sum(run.failed.values())
    logger = get_run_logger()
    logger.info(
        "%s: %s in %.1f s, %d passed, %d failed%s",
        suite.candidate_id,
        run.outcome,
        run.seconds,
        passed,
        failed,
        f" ({run.detail})" if run.detail else "",
    )
    for failure in run.failures:  # the task run's page then says what failed
        logger.warning("failed: %s", failure)
    return run

"""The service's runners as separate processes (`python -m flows.service`), against one
nats-server, one Prefect API and a fake model server: a runner killed with SIGKILL in the
middle of its deliberations leaves them to another runner, which resumes each by its id;
no finished call is asked again, and each deliberation concludes once. And a runner on its
own temporary Prefect API (no PREFECT_API_URL, as `python -m flows.service` runs on a
laptop) sees its deliberations cancelled."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.settings import PREFECT_API_URL

from agents.events import DeliberationEvent
from flows.runtime.embedded import LocalNatsServer
from tests.agreement import assert_stream_agrees_with_stored_result
from tests.fake_llm import HANG, FakeLLMServer, ok
from tests.processes import command_line, process_tree
from tests.runner_process import RunnerProcess
from tests.service import Service

pytestmark = pytest.mark.slow


def _wait_until(condition: Callable[[], Any], timeout: float) -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, "condition not met in time"
        time.sleep(0.2)


@pytest.fixture
def runners(
    fake_llm: FakeLLMServer, prefect_api: None, tmp_path: Path
) -> Iterator[tuple[Service, Callable[[str], RunnerProcess]]]:
    with LocalNatsServer() as nats_server:
        env = {
            **os.environ,
            "NATS_URL": nats_server.url,
            "VLLM_URL": fake_llm.url,
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "DELIBERATION_SERVICE_ACK_WAIT_SECONDS": "5",
            "DELIBERATION_SERVICE_CONCURRENCY": "4",
            "DELIBERATION_RETRY_BACKOFF_SECONDS": "0.2",
            "DELIBERATION_STATE_DIR": str(tmp_path / "state"),
        }
        started: list[RunnerProcess] = []

        def start(name: str, own_prefect_api: bool = False) -> RunnerProcess:
            runner_env = {k: v for k, v in env.items() if not (own_prefect_api and k == "PREFECT_API_URL")}
            runner = RunnerProcess(runner_env, tmp_path / f"{name}.log")
            started.append(runner)
            runner.wait_ready()
            return runner

        try:
            yield Service(nats_server.url, fake_llm), start
        finally:
            for runner in started:
                runner.stop()


def test_a_runner_killed_mid_run_leaves_its_deliberations_to_another_which_resumes_them(
    runners: tuple[Service, Callable[[str], RunnerProcess]],
) -> None:
    service, start = runners
    first = start("first")
    # DEV answers at once, QA only after a while: the kill comes between the two.
    for _ in range(3):
        service.llm.script("agent-qa-001", ok(delay=15))
    ids = [
        service.answer("submit", {"task": "t", "roles": ["DEV", "QA"], "rounds": 0})["deliberation_id"]
        for _ in range(3)
    ]
    for deliberation_id in ids:
        service.wait_for(deliberation_id, "running")
    _wait_until(
        lambda: (
            len(service.llm.calls_for("agent-dev-001")) == 3
            and all(c.ended for c in service.llm.calls_for("agent-dev-001"))
        ),
        60,
    )
    time.sleep(1)  # their outcomes recorded in the ledger
    first.kill()

    start("second")
    for deliberation_id in ids:
        done = service.wait_for(deliberation_id, "completed", timeout=240)
        assert done["result"]["completed"] == 2
        assert_stream_agrees_with_stored_result(service.url, deliberation_id)
    # DEV's finished calls stood; QA's, cut by the kill, were asked again.
    assert len(service.llm.calls_for("agent-dev-001")) == 3
    assert len(service.llm.calls_for("agent-qa-001")) == 6
    finals: Counter[str] = Counter()
    for deliberation_id in ids:
        finals.update(
            e.deliberation_id
            for e in _events(service.url, deliberation_id)
            if isinstance(e, DeliberationEvent)
        )
    assert finals == dict.fromkeys(ids, 1)


def test_a_runner_on_its_own_temporary_prefect_api_sees_its_deliberation_cancelled(
    runners: tuple[Service, Callable[[str, bool], RunnerProcess]],
) -> None:
    # The flow run's API is a context variable there, which the cancellation poller's
    # thread does not inherit: it started Prefect's ephemeral server (~200 MiB more) and
    # polled that; it saw the cancel only because both servers share the default database.
    service, start = runners
    laptop = start("laptop", True)
    service.llm.script("agent-qa-001", HANG)
    deliberation_id = service.answer("submit", {"task": "t", "roles": ["DEV", "QA"], "rounds": 0})[
        "deliberation_id"
    ]
    service.wait_for(deliberation_id, "running")
    _wait_until(lambda: bool(service.llm.calls_for("agent-qa-001")), 120)
    service.answer("cancel", {"deliberation_id": deliberation_id})
    done = service.wait_for(deliberation_id, "cancelled", timeout=60)
    assert done["result"]["status"] == "cancelled"
    _wait_until(lambda: all(c.client_disconnected for c in service.llm.calls_for("agent-qa-001")), 10)
    servers = [c for pid in process_tree(laptop.process.pid) if "uvicorn" in (c := command_line(pid) or "")]
    assert len(servers) == 1 and "flows.runtime.temporary_api" in servers[0], servers


def _events(url: str, deliberation_id: str) -> list[Any]:
    from agents.adapters.nats import EventBus
    from agents.settings import bus_config_for

    with EventBus.connect(bus_config_for(url)) as bus:
        return bus.read_events(deliberation_id)

"""The service's runners as separate processes (`python -m flows.service`), against one
nats-server, one Prefect API and a fake model server: a runner killed with SIGKILL in the
middle of its deliberations leaves them to another runner, which resumes each by its id;
nats-server restarted in a burst, and the Prefect API unreachable for a while, are ridden
out; no finished call is asked again, and each deliberation concludes once. And a runner on
its own temporary Prefect API (no PREFECT_API_URL, as `python -m flows.service` runs on a
laptop) sees its deliberations cancelled."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from prefect.client.schemas.objects import TaskRun
from prefect.settings import PREFECT_API_URL

from agents.adapters.nats.intake import INTAKE_STREAM
from agents.events import DeliberationEvent, DeliberationProgressEvent
from flows.runtime.embedded import LocalNatsServer
from support.agreement import assert_each_concluded_once, assert_stream_agrees_with_stored_result
from support.processes import command_line, process_tree
from support.runner_process import READY, RunnerProcess
from tests.fake_llm import HANG, FakeLLMServer, ok
from tests.service import Service, finished_flow_run, request, task_runs_of
from tests.tcp_proxy import TcpProxy
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def nats_server() -> Iterator[LocalNatsServer]:
    """The runners' nats-server, this test's own (to restart)."""
    with LocalNatsServer() as server:
        yield server


@pytest.fixture
def runners(
    fake_llm: FakeLLMServer, prefect_api: None, nats_server: LocalNatsServer, tmp_path: Path
) -> Iterator[tuple[Service, Callable[..., RunnerProcess]]]:
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

    def start(name: str, own_prefect_api: bool = False, wait: bool = True, **overrides: str) -> RunnerProcess:
        runner_env = {k: v for k, v in env.items() if not (own_prefect_api and k == "PREFECT_API_URL")}
        runner = RunnerProcess(runner_env | overrides, tmp_path / f"{name}.log")
        started.append(runner)
        if wait:
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
    killed_runs = [service.wait_for(deliberation_id, "running")["flow_run_id"] for deliberation_id in ids]
    wait_until(
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
    # The killed runner's flow runs, and their calls cut by the kill, are not left Running in
    # the UI: the runner that took each over marked them Crashed, saying why.
    expected = {("dev", "Completed"): 1, ("qa", "Crashed"): 1}
    for flow_run_id, deliberation_id in zip(killed_runs, ids, strict=True):
        killed = finished_flow_run(flow_run_id, timeout=30)
        assert killed.state is not None and killed.state.is_crashed(), killed.state
        assert f"deliberation {deliberation_id} was taken over" in (killed.state.message or "")
        task_runs_of(flow_run_id, until=lambda runs: _states(runs) == expected, timeout=30)


def _states(task_runs: list[TaskRun]) -> Counter[tuple[str, str | None]]:
    return Counter((t.name.split("-")[1], t.state_name) for t in task_runs)


def test_a_runner_whose_model_server_is_away_at_start_takes_submits_says_why_and_runs_them_once_it_answers(
    runners: tuple[Service, Callable[..., RunnerProcess]], fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    # vLLM loading its weights for minutes: the service used to exit, and crash-loop.
    service, start = runners
    model_server = TcpProxy("127.0.0.1", fake_llm.port).start()
    model_server.down()
    ready_file = tmp_path / "ready"
    try:
        runner = start(
            "waiting",
            wait=False,
            VLLM_URL=f"http://127.0.0.1:{model_server.port}",
            DELIBERATION_SERVICE_READY_FILE=str(ready_file),
        )
        wait_until(lambda: ready_file.exists() and ready_file.read_text().startswith("waiting: "), 120)
        assert f"cannot reach http://127.0.0.1:{model_server.port}" in ready_file.read_text()
        assert "check VLLM_URL" in ready_file.read_text()
        said = b"service: waiting for the model server: cannot reach"
        wait_until(lambda: said in runner.log.read_bytes(), 10)
        # Submits are taken meanwhile: the intake keeps them until a runner can run them.
        submitted = service.answer("submit", {"task": "t", "roles": ["DEV"], "rounds": 0})
        deliberation_id = submitted["deliberation_id"]
        assert service.answer("get", {"deliberation_id": deliberation_id})["status"] == "accepted"
        assert runner.process.poll() is None and READY not in runner.log.read_bytes()
        model_server.up()
        done = service.wait_for(deliberation_id, "completed", timeout=180)
        assert done["result"]["completed"] == 1
        assert ready_file.read_text() == "ready\n"
        assert READY in runner.log.read_bytes()
        assert len(service.llm.calls_for("agent-dev-001")) == 1
    finally:
        model_server.stop()


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
    wait_until(lambda: bool(service.llm.calls_for("agent-qa-001")), 120)
    service.answer("cancel", {"deliberation_id": deliberation_id})
    done = service.wait_for(deliberation_id, "cancelled", timeout=60)
    assert done["result"]["status"] == "cancelled"
    wait_until(lambda: all(c.client_disconnected for c in service.llm.calls_for("agent-qa-001")), 10)
    servers = [c for pid in process_tree(laptop.process.pid) if "uvicorn" in (c := command_line(pid) or "")]
    assert len(servers) == 1 and "flows.runtime.temporary_api" in servers[0], servers


def _events(url: str, deliberation_id: str) -> list[Any]:
    from agents.adapters.nats import EventBus
    from agents.settings import bus_config_for

    with EventBus.connect(bus_config_for(url)) as bus:
        return bus.read_events(deliberation_id)


def _submit_councils_of_two(service: Service, task: str, count: int) -> list[str]:
    """`count` deliberations of DEV and QA without a review round; their ids."""
    submit = {"roles": ["DEV", "QA"], "rounds": 0}
    return [
        service.answer("submit", submit | {"task": f"{task} {i}"})["deliberation_id"] for i in range(count)
    ]


def test_a_request_delivered_again_while_it_runs_is_answered_by_the_run_in_progress(
    runners: tuple[Service, Callable[..., RunnerProcess]], nats_server: LocalNatsServer
) -> None:
    # nats-server away for longer than the ack wait (5 s): the runner's heartbeats are lost,
    # so the intake delivers both running requests again, and the runner, with free slots,
    # takes them. The runs in progress answer for them: no call is asked twice.
    service, start = runners
    start("runner")
    for _ in range(2):
        service.llm.script("agent-qa-001", ok(delay=20))
    ids = _submit_councils_of_two(service, "again", 2)
    wait_until(lambda: len(service.llm.calls_for("agent-qa-001")) == 2, 90)
    nats_server.restart(down_for=7)
    wait_until(lambda: _answers_ping(service.url), 30)

    for deliberation_id in ids:
        done = service.wait_for(deliberation_id, "completed", timeout=90)
        assert done["result"]["completed"] == 2
    # Not asked again, nor asked twice at once by a second run of the same request.
    assert [len(service.llm.calls_for(a)) for a in ("agent-dev-001", "agent-qa-001")] == [2, 2]
    assert service.llm.asked_again() == []
    assert_each_concluded_once(service.url, ids)
    service.wait_until_acked()


def test_nats_server_restarted_in_a_burst_every_deliberation_concludes_once(
    runners: tuple[Service, Callable[..., RunnerProcess]], nats_server: LocalNatsServer
) -> None:
    # Four run at once on the runner (its concurrency), two wait in the intake; QA is still
    # answering when nats-server stops, and is answered while it is down or coming back.
    service, start = runners
    start("runner")
    for _ in range(6):
        service.llm.script("agent-qa-001", ok(delay=4))
    ids = _submit_councils_of_two(service, "burst", 6)
    wait_until(lambda: sum(1 for c in service.llm.calls_for("agent-dev-001") if c.ended) >= 4, 90)
    nats_server.restart()
    # Until the runner has reconnected, a request finds no responders (0.4 s here).
    wait_until(lambda: _answers_ping(service.url), 30)

    for deliberation_id in ids:
        done = service.wait_for(deliberation_id, "completed", timeout=90)
        assert done["result"]["completed"] == 2
    assert_each_concluded_once(service.url, ids)
    assert service.llm.asked_again() == []
    service.wait_until_acked()


def _answers_ping(url: str) -> bool:
    """The service answers on `url` (its instances subscribe again after a reconnect)."""
    try:
        return bool(request(url, "$SRV.PING.deliberation", b"", timeout=1).data)
    except (NoRespondersError, NatsTimeoutError):
        return False


@pytest.fixture
def prefect_api_proxy(prefect_api: None) -> Iterator[TcpProxy]:
    """A proxy in front of the Prefect API. Requested before `runners`, it stops after them:
    a runner sends its last logs to the API as it exits."""
    api = urlsplit(str(PREFECT_API_URL.value()))
    proxy = TcpProxy(api.hostname or "127.0.0.1", api.port or 80).start()
    yield proxy
    proxy.stop()


def test_the_prefect_api_unreachable_for_ten_seconds_mid_deliberation_is_ridden_out_by_prefects_client(
    prefect_api_proxy: TcpProxy, runners: tuple[Service, Callable[..., RunnerProcess]]
) -> None:
    """The runner reaches the Prefect API through a proxy that cuts its connections and
    refuses new ones for 10 s, after DEV answered and while QA is still answering. Prefect's
    client rides it out: the requests that fail meanwhile (read and protocol errors, and a
    refused connect once the client has connected before) are retried with backoff (2, 4,
    8 s) and go through once the API is back. The flow run neither fails nor crashes, so the
    request is not delivered again: one flow run, one try, concluded once."""
    service, start = runners
    proxy = prefect_api_proxy
    api = urlsplit(str(PREFECT_API_URL.value()))
    runner = start("runner", PREFECT_API_URL=api._replace(netloc=f"127.0.0.1:{proxy.port}").geturl())
    service.llm.script("agent-qa-001", ok(delay=8))
    deliberation_id = service.answer("submit", {"task": "t", "roles": ["DEV", "QA"], "rounds": 0})[
        "deliberation_id"
    ]
    wait_until(lambda: any(c.ended for c in service.llm.calls_for("agent-dev-001")), 90)
    proxy.down()
    time.sleep(10)
    proxy.up()
    before = proxy.connections
    done = service.wait_for(deliberation_id, "completed", timeout=90)
    assert done["result"]["completed"] == 2
    assert_each_concluded_once(service.url, [deliberation_id])
    assert service.llm.asked_again() == []
    assert len(service.llm.calls_for("agent-qa-001")) == 1  # answered during the outage
    progress = [e for e in _events(service.url, deliberation_id) if isinstance(e, DeliberationProgressEvent)]
    assert [(e.status, e.attempt) for e in progress] == [("accepted", 1), ("started", 1)]
    assert "delivery 2" not in runner.log.read_text()

    flow_run = finished_flow_run(done["flow_run_id"])
    assert flow_run.state is not None and flow_run.state.is_completed() and flow_run.run_count == 1
    assert proxy.cut > 0 and proxy.connections > before  # it was cut off, and came back


def test_a_front_apart_from_the_runners_takes_submits_alone_and_never_runs_a_flow(
    runners: tuple[Service, Callable[..., RunnerProcess]],
) -> None:
    service, start = runners
    front = start("front", DELIBERATION_SERVICE_ROLE="front")
    submitted = {"task": "front and runner apart", "roles": ["DEV", "QA"], "rounds": 0}
    deliberation_id = service.answer("submit", submitted)["deliberation_id"]
    # No runner yet: the request waits in the intake, and `get` says so.
    assert service.answer("get", {"deliberation_id": deliberation_id})["status"] == "accepted"
    assert service.stream_messages(INTAKE_STREAM) == 1

    runner = start("runner", DELIBERATION_SERVICE_ROLE="runner")
    done = service.wait_for(deliberation_id, "completed")
    assert done["result"]["completed"] == 2
    assert_each_concluded_once(service.url, [deliberation_id])

    # The front started neither Ray nor a flow run; the runner answers no endpoint.
    commands = [command_line(pid) or "" for pid in process_tree(front.pid)]
    assert not [c for c in commands if "raylet" in c or "gcs_server" in c], commands
    taken = f"deliberation {deliberation_id} taken"
    assert taken not in front.log_tail(100_000)
    assert taken in runner.log_tail(100_000)
    front.stop()
    with pytest.raises(NoRespondersError):
        request(service.url, "deliberation.get", b'{"deliberation_id": "x"}', timeout=5)

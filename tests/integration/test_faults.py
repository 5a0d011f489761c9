"""Faults injected into real servers: the pipeline survives them, and no event is lost or
duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.states import State

from agents.adapters.nats import EventBus
from agents.events import AgentResponseEvent
from agents.models import DeliberationRequest, DeliberationResult
from agents.settings import bus_config_for
from flows.deliberate import deliberate
from flows.runtime.embedded import LocalNatsServer
from support.agreement import assert_stream_agrees_with_stored_result
from tests.fake_llm import HANG, FakeLLMServer, ok
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def own_nats(
    fake_llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, ray_cluster: None
) -> Iterator[LocalNatsServer]:
    """A nats-server of this test's own (to restart or to fill), with the pipeline on it."""
    with LocalNatsServer() as server:
        monkeypatch.setenv("VLLM_URL", fake_llm.url)
        monkeypatch.setenv("NATS_URL", server.url)
        yield server


class BackgroundRun:
    """A deliberate flow run on a thread, so the test can inject a fault meanwhile."""

    def __init__(self, request: DeliberationRequest) -> None:
        self._state: State[Any] | None = None
        self._thread = threading.Thread(target=self._run, args=(request,))
        self._thread.start()

    def _run(self, request: DeliberationRequest) -> None:
        self._state = deliberate(request=request, return_state=True)

    def finish(self, timeout: float = 300) -> tuple[State[Any], Any]:
        self._thread.join(timeout)
        assert not self._thread.is_alive() and self._state is not None, "the flow run hung"
        return self._state, self._state.result(raise_on_failure=False)


def test_nats_restart_mid_deliberation_loses_and_duplicates_nothing(
    own_nats: LocalNatsServer, fake_llm: FakeLLMServer
) -> None:
    # DEV answers at once; QA and DATA answer while NATS is down or just back.
    fake_llm.script("agent-qa-001", ok(delay=4))
    fake_llm.script("agent-data-001", ok(delay=6))
    deliberation_id = uuid.uuid4().hex
    request = DeliberationRequest(task="t", roles=["DEV", "QA", "DATA"], deliberation_id=deliberation_id)
    run = BackgroundRun(request)
    wait_until(lambda: any(c.ended for c in fake_llm.calls_for("agent-dev-001")), timeout=120)
    own_nats.restart()
    state, result = run.finish()
    assert isinstance(result, DeliberationResult), result
    assert state.is_completed(), result.summary
    with EventBus.connect(bus_config_for(own_nats.url)) as bus:
        events = bus.read_events(deliberation_id)
    agents = Counter(e.agent_id for e in events if isinstance(e, AgentResponseEvent))
    assert agents == {"agent-dev-001": 1, "agent-qa-001": 1, "agent-data-001": 1}
    assert Counter(e.subject for e in events)["deliberation.completed"] == 1


def test_a_killed_ray_worker_is_retried_and_the_deliberation_completes(
    pipeline: FakeLLMServer, read_events: Any
) -> None:
    pipeline.script("agent-qa-001", HANG)
    deliberation_id = uuid.uuid4().hex
    request = DeliberationRequest(task="t", roles=["DEV", "QA"], deliberation_id=deliberation_id)
    run = BackgroundRun(request)
    wait_until(lambda: bool(pipeline.calls_for("agent-qa-001")), timeout=120)
    worker = _pid_with_local_port(pipeline.calls_for("agent-qa-001")[0].client_port)
    os.kill(worker, signal.SIGKILL)
    state, result = run.finish()
    assert state.is_completed(), getattr(result, "summary", result)
    assert [o.status for o in result.outcomes] == ["completed", "completed"]
    assert len(pipeline.calls_for("agent-qa-001")) == 2  # the killed attempt, then the retry
    agents = Counter(e.agent_id for e in read_events(deliberation_id) if isinstance(e, AgentResponseEvent))
    assert agents == {"agent-dev-001": 1, "agent-qa-001": 1}


def _pid_with_local_port(port: int) -> int:
    """The process holding a TCP socket bound to `port` on this machine (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes and int(fd.parts[2]) != os.getpid():
            return int(fd.parts[2])
    raise AssertionError(f"no process holds local port {port}")


def test_model_server_going_down_mid_run_fails_the_agents_it_had_and_quorum_decides(
    pipeline: FakeLLMServer, read_events: Any
) -> None:
    pipeline.script("agent-qa-001", HANG)
    deliberation_id = uuid.uuid4().hex
    request = DeliberationRequest(task="t", roles=["DEV", "QA"], quorum=1, deliberation_id=deliberation_id)
    run = BackgroundRun(request)
    wait_until(
        lambda: (
            bool(pipeline.calls_for("agent-qa-001"))
            and any(c.ended for c in pipeline.calls_for("agent-dev-001"))
        ),
        timeout=120,
    )
    pipeline.stop()
    state, result = run.finish()
    assert state.is_completed(), result.summary
    qa = next(o for o in result.outcomes if o.agent_id == "agent-qa-001")
    assert qa.status == "failed" and qa.error is not None
    assert qa.error.type == "LLMUnavailable" and qa.attempts == 4  # 1 + DELIBERATION_MAX_RETRIES
    events = read_events(deliberation_id)
    failed = [e for e in events if e.subject == "agent.response.failed"]
    assert [e.agent_id for e in failed] == ["agent-qa-001"]  # type: ignore[attr-defined]
    assert Counter(e.subject for e in events)["deliberation.completed"] == 1


def test_a_full_stream_fails_the_run_loudly_and_leaves_no_agent_running(
    own_nats: LocalNatsServer, fake_llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DELIBERATION_STREAM_MAX_MSGS", "1")
    monkeypatch.setenv("DELIBERATION_STREAM_DISCARD", "new")
    fake_llm.script("agent-qa-001", ok(delay=1))
    fake_llm.script("agent-data-001", HANG)
    deliberation_id = uuid.uuid4().hex
    request = DeliberationRequest(task="t", roles=["DEV", "QA", "DATA"], deliberation_id=deliberation_id)
    state = deliberate(request=request, return_state=True)

    assert state.is_failed()
    assert "maximum messages exceeded" in str(state.message)
    with EventBus.connect(bus_config_for(own_nats.url)) as bus:
        events = bus.read_events(deliberation_id)
    # Room for one event: whichever of DEV and QA answered first; the other was refused.
    assert len(events) == 1 and events[0].agent_id in {"agent-dev-001", "agent-qa-001"}  # type: ignore[attr-defined]
    # The hanging agent was cancelled with the failing attempt, so its request was dropped
    # (the flow run's retry then asked again, and failed to publish again).
    assert fake_llm.calls_for("agent-data-001")[0].client_disconnected


@pytest.mark.slow
def test_a_killed_flow_process_is_recovered_by_a_rerun_without_recalls_or_duplicates(
    fake_llm: FakeLLMServer, nats_url: str, prefect_api: None, read_events: Any
) -> None:
    from prefect.settings import PREFECT_API_URL

    # DEV answers; QA's first request hangs, so the flow process is killed mid-deliberation.
    fake_llm.script("agent-qa-001", HANG)
    deliberation_id = uuid.uuid4().hex
    env = {
        **os.environ,
        "VLLM_URL": fake_llm.url,
        "NATS_URL": nats_url,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
    }
    argv = [sys.executable, "-m", "flows.deliberate", "t", "--roles", "DEV,QA", "--rounds", "0"]
    argv += ["--deliberation-id", deliberation_id, "--json"]
    first = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        give_up = time.monotonic() + 180
        while not (read_events(deliberation_id) and fake_llm.calls_for("agent-qa-001")):
            assert first.poll() is None and time.monotonic() < give_up, "the first run ended early"
            time.sleep(0.5)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the flow process and everything it started
        first.wait(30)
    assert [e.agent_id for e in read_events(deliberation_id)] == ["agent-dev-001"]

    second = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    result = DeliberationResult.model_validate_json(second.stdout)
    assert result.completed == 2
    assert len(fake_llm.calls_for("agent-dev-001")) == 1  # its proposal was reused, not asked again
    assert len(fake_llm.calls_for("agent-qa-001")) == 2
    events = read_events(deliberation_id)
    assert Counter(e.msg_id for e in events) == {e.msg_id: 1 for e in events}
    assert Counter(e.agent_id for e in events if isinstance(e, AgentResponseEvent)) == {
        "agent-dev-001": 1,
        "agent-qa-001": 1,
    }
    assert assert_stream_agrees_with_stored_result(nats_url, deliberation_id) == result

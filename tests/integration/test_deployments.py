"""prefect.yaml against a real Prefect server: deploy, a worker, a run triggered through
the API, and the schedule registered."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents.adapters.nats import EventBus
from agents.events import DeliberationEvent
from agents.models import DeliberationStatus
from agents.settings import bus_config_for
from flows.runtime.embedded import ManagedProcess
from tests.agreement import assert_stream_agrees_with_stored_result
from tests.fake_llm import HANG, FakeLLMServer, status

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")


class PrefectServer(ManagedProcess):
    name = "prefect-server"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def command(self) -> list[str]:
        return [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]

    def is_ready(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


class PrefectWorker(ManagedProcess):
    name = "prefect-worker"

    def command(self) -> list[str]:
        return [PREFECT, "worker", "start", "--pool", "deliberation"]

    def is_ready(self) -> bool:
        return True


@pytest.fixture
def prefect_env(fake_llm: FakeLLMServer, nats_url: str) -> Iterator[dict[str, str]]:
    env = {
        "PREFECT_HOME": tempfile.mkdtemp(prefix="deliberation-prefect-"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "VLLM_URL": fake_llm.url,
        "NATS_URL": nats_url,
        "DELIBERATION_RETRY_BACKOFF_SECONDS": "0.2",
    }
    with PrefectServer(startup_timeout=120, env=env) as server:
        env["PREFECT_API_URL"] = server.api_url
        yield env


def prefect(env: dict[str, str], *args: str) -> None:
    proc = subprocess.run(
        [PREFECT, *args], cwd=ROOT, env=_with_os(env), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def _with_os(env: dict[str, str]) -> dict[str, str]:
    import os

    return {**os.environ, **env}


def api(env: dict[str, str], method: str, path: str, body: Any = None) -> Any:
    # The server answers 503 while its SQLite database is busy (say, the scheduler writing
    # the nightly runs); Prefect's own client retries those, and so does this helper.
    for attempt in range(6):
        response = httpx.request(method, env["PREFECT_API_URL"] + path, json=body, timeout=30)
        if response.status_code not in (429, 503) or attempt == 5:
            break
        time.sleep(0.5 * 2**attempt)
    response.raise_for_status()
    return response.json()


def test_deployments_from_prefect_yaml_run_on_a_worker(
    prefect_env: dict[str, str], fake_llm: FakeLLMServer
) -> None:
    prefect(prefect_env, "work-pool", "create", "deliberation", "--type", "process")
    prefect(prefect_env, "--no-prompt", "deploy", "--all")

    nightly = api(prefect_env, "GET", "/deployments/name/deliberate/nightly-review")
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert nightly["parameters"]["request"]["roles"] == ["DEV", "QA", "ARCHITECT"]
    on_demand = api(prefect_env, "GET", "/deployments/name/deliberate/on-demand")
    schema = on_demand["parameter_openapi_schema"]
    assert schema["required"] == ["request"]

    fake_llm.script("agent-dev-001", status(503))
    request = {"task": "Add rate limiting", "task_id": "login-rate-limit", "roles": ["DEV", "QA"]}
    flow_run = api(
        prefect_env,
        "POST",
        f"/deployments/{on_demand['id']}/create_flow_run",
        {"parameters": {"request": request}},
    )
    with PrefectWorker(startup_timeout=30, env=prefect_env):
        state = _wait_for_final_state(prefect_env, flow_run["id"], timeout=300)
    assert state["type"] == "COMPLETED", state.get("message")
    assert api(prefect_env, "GET", f"/flow_runs/{flow_run['id']}")["name"] == "login-rate-limit-dev-qa-x1"

    task_runs = api(
        prefect_env, "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run["id"]]}}}
    )
    proposals = {t["name"]: t for t in task_runs if t["name"].endswith(".proposal")}
    assert sorted(proposals) == ["agent-dev-001.proposal", "agent-qa-001.proposal"]
    assert proposals["agent-dev-001.proposal"]["run_count"] == 2  # 503, then success
    assert proposals["agent-qa-001.proposal"]["run_count"] == 1
    # Untagged on purpose: every tagged task run asks the API for tag concurrency slots.
    assert proposals["agent-qa-001.proposal"]["tags"] == []
    assert all(t["state_type"] == "COMPLETED" for t in proposals.values())
    artifacts = api(
        prefect_env, "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}}}
    )
    assert sorted(a["type"] for a in artifacts) == ["markdown", "table"]

    # Cancelled from the UI while QA's proposal is held: as for a run of the CLI or the
    # service, the held request is dropped and the deliberation concludes cancelled, once.
    fake_llm.script("agent-qa-001", HANG)
    deliberation_id = uuid.uuid4().hex
    request |= {"task_id": "cancelled-run", "deliberation_id": deliberation_id}
    cancelled = api(
        prefect_env,
        "POST",
        f"/deployments/{on_demand['id']}/create_flow_run",
        {"parameters": {"request": request}},
    )
    with PrefectWorker(startup_timeout=30, env=prefect_env):
        _wait_until(lambda: len(fake_llm.calls_for("agent-qa-001")) == 2, timeout=300)
        api(
            prefect_env,
            "POST",
            f"/flow_runs/{cancelled['id']}/set_state",
            {"state": {"type": "CANCELLING", "message": "cancelled from the UI"}, "force": True},
        )
        state = _wait_for_final_state(prefect_env, cancelled["id"], timeout=120)
    assert state["type"] == "CANCELLED", state
    assert str(state["message"]).startswith("cancelled (cancelled from the UI)")
    _wait_until(lambda: fake_llm.calls_for("agent-qa-001")[-1].client_disconnected, timeout=30)
    stored = assert_stream_agrees_with_stored_result(prefect_env["NATS_URL"], deliberation_id)
    assert stored.status is DeliberationStatus.CANCELLED, stored.summary
    with EventBus.connect(bus_config_for(prefect_env["NATS_URL"])) as bus:
        finals = [e.subject for e in bus.read_events(deliberation_id) if isinstance(e, DeliberationEvent)]
    assert finals == ["deliberation.cancelled"]


def _wait_until(condition: Callable[[], Any], timeout: float) -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, "condition not met in time"
        time.sleep(0.2)


def _wait_for_final_state(env: dict[str, str], flow_run_id: str, timeout: float) -> dict[str, Any]:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        state = api(env, "GET", f"/flow_runs/{flow_run_id}")["state"]
        if state and state["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            return dict(state)
        time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} did not finish within {timeout} s")

"""prefect.yaml against a real Prefect server: deploy, a worker, a run triggered through
the API, and the schedule registered."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator

import pytest

from agents.adapters.nats import EventBus
from agents.events import DeliberationEvent
from agents.models import DeliberationStatus
from agents.settings import bus_config_for
from support.agreement import assert_stream_agrees_with_stored_result
from support.prefect_server import (
    PrefectServer,
    PrefectWorker,
    api,
    prefect,
    run_deployment,
    wait_for_final_state,
)
from tests.fake_llm import HANG, FakeLLMServer, status
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


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
    flow_run = run_deployment(prefect_env, on_demand["id"], {"request": request})
    with PrefectWorker(startup_timeout=30, env=prefect_env):
        state = wait_for_final_state(prefect_env, flow_run["id"], timeout=300)
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
    cancelled = run_deployment(prefect_env, on_demand["id"], {"request": request})
    with PrefectWorker(startup_timeout=30, env=prefect_env):
        wait_until(lambda: len(fake_llm.calls_for("agent-qa-001")) == 2, timeout=300)
        api(
            prefect_env,
            "POST",
            f"/flow_runs/{cancelled['id']}/set_state",
            {"state": {"type": "CANCELLING", "message": "cancelled from the UI"}, "force": True},
        )
        state = wait_for_final_state(prefect_env, cancelled["id"], timeout=120)
    assert state["type"] == "CANCELLED", state
    # The flow concludes Cancelled with its reason; then the worker, seeing its process
    # gone, forces Cancelled again with its own message, so the reason is in the history.
    history = api(prefect_env, "GET", f"/flow_run_states/?flow_run_id={cancelled['id']}")
    messages = [str(s["message"]) for s in history if s["type"] == "CANCELLED"]
    assert any(m.startswith("cancelled (cancelled from the UI)") for m in messages), messages
    wait_until(lambda: fake_llm.calls_for("agent-qa-001")[-1].client_disconnected, timeout=30)
    stored = assert_stream_agrees_with_stored_result(prefect_env["NATS_URL"], deliberation_id)
    assert stored.status is DeliberationStatus.CANCELLED, stored.summary
    with EventBus.connect(bus_config_for(prefect_env["NATS_URL"])) as bus:
        finals = [e.subject for e in bus.read_events(deliberation_id) if isinstance(e, DeliberationEvent)]
    assert finals == ["deliberation.cancelled"]

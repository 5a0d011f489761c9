"""The service's figures (issue 34): /metrics for Prometheus, and the same counts in the
services API's $SRV.STATS and the fleet API's GetStatus, from a real deliberation against
the service in this process (a real nats-server, Ray, Prefect's engine, the fake model
server). The figures are the process's own, so each test reads them before and after."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import NamedTuple

import grpc
import httpx
import pytest

from flows.runtime.embedded import free_port
from flows.service.fleet import orchestrator_pb2 as pb
from flows.service.fleet import orchestrator_pb2_grpc as pb_grpc
from tests.fake_llm import FakeLLMServer
from tests.service import Service, request, running_service
from tests.waiting import wait_until

SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


class Figures(NamedTuple):
    service: Service
    metrics_url: str
    grpc_address: str


@pytest.fixture
def figures(fake_llm: FakeLLMServer, ray_cluster: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Figures]:
    metrics_port, grpc_port = free_port(), free_port()
    monkeypatch.setenv("DELIBERATION_METRICS_PORT", str(metrics_port))
    monkeypatch.setenv("DELIBERATION_GRPC_PORT", str(grpc_port))
    with running_service(fake_llm, monkeypatch) as service:
        yield Figures(service, f"http://127.0.0.1:{metrics_port}/metrics", f"127.0.0.1:{grpc_port}")


def scrape(url: str) -> dict[str, float]:
    """Each sample by `name{labels}`, as Prometheus would read the page."""
    page = httpx.get(url, timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in page.text.splitlines():
        if (match := SAMPLE.match(line)) is not None:
            key = match["name"] + (f"{{{match['labels']}}}" if match["labels"] else "")
            samples[key] = float(match["value"])
    return samples


def test_a_deliberation_shows_on_metrics_stats_and_get_status(figures: Figures) -> None:
    service = figures.service
    before = scrape(figures.metrics_url)
    reply = service.answer(
        "submit", {"task": "Add rate limiting to the login endpoint", "roles": ["DEV", "QA"]}
    )
    service.wait_for(reply["deliberation_id"], "completed")
    # Concluded (as `get` says) a moment before its flow run returns to the runner.
    wait_until(lambda: scrape(figures.metrics_url)["deliberation_running"] == 0, 30)
    after = scrape(figures.metrics_url)

    def grew(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew('deliberation_submitted_total{via="nats"}') == 1
    assert grew('deliberation_agents_submitted_total{role="DEV"}') == 1
    assert grew('deliberation_concluded_total{status="completed"}') == 1
    assert grew("deliberation_duration_seconds_count") == 1
    # The two proposals and, with one review round, the critiques and revisions: every
    # answered call's latency, by stage.
    assert grew('deliberation_model_call_seconds_count{stage="proposal"}') == 2
    assert grew('deliberation_model_call_seconds_count{stage="revision"}') == 2
    # This test's model server; the process's other tests had theirs.
    assert after[f'deliberation_model_calls_in_flight{{endpoint="{service.llm.url}"}}'] == 0
    assert "deliberation_intake_pending" in after and "deliberation_intake_unacked" in after

    stats = json.loads(request(service.url, "$SRV.STATS.deliberation", b"").data)
    (submit,) = [e for e in stats["endpoints"] if e["name"] == "submit"]
    assert submit["data"]["submitted"] == after['deliberation_submitted_total{via="nats"}'] + after.get(
        'deliberation_submitted_total{via="grpc"}', 0
    )
    assert (
        submit["data"]["concluded"]["completed"] == after['deliberation_concluded_total{status="completed"}']
    )

    with grpc.insecure_channel(figures.grpc_address) as channel:
        status = pb_grpc.OrchestratorServiceStub(channel).GetStatus(
            pb.GetStatusRequest(include_stats=True), timeout=10
        )
    assert status.stats.total_deliberations == submit["data"]["submitted"]
    assert status.stats.total_orchestrations >= 1 and status.stats.avg_deliberation_time_ms > 0

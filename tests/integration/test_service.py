"""The deliberation service on NATS, driven as another service would drive it: plain NATS
requests to deliberation.submit / get / cancel and the services API's discovery subjects,
against a real nats-server (one per test), real Ray, Prefect's engine and a fake model
server on 127.0.0.1. The service runs in this process, as `python -m flows.service` runs it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import jsonschema
import nats
import pytest

from agents.adapters.nats import EventBus
from agents.events import DeliberationEvent, DeliberationProgressEvent
from agents.service import MAX_PAYLOAD_BYTES
from agents.settings import bus_config_for
from flows.schemas import SCHEMA_DIR
from support.agreement import assert_stream_agrees_with_stored_result
from tests.fake_llm import HANG, FakeLLMServer
from tests.service import (
    ERROR,
    ERROR_CODE,
    Service,
    finished_flow_run,
    request,
    running_service,
    task_runs_of,
)
from tests.waiting import wait_until


def conforms(document: dict[str, Any], schema: str) -> None:
    """`document` is valid under schemas/<schema>.schema.json, what a client in another
    language is given."""
    jsonschema.Draft202012Validator(json.loads((SCHEMA_DIR / f"{schema}.schema.json").read_text())).validate(
        document
    )


def _events(url: str, deliberation_id: str) -> list[Any]:
    with EventBus.connect(bus_config_for(url)) as bus:
        return bus.read_events(deliberation_id)


def test_a_submitted_deliberation_is_accepted_at_once_runs_as_a_flow_run_and_get_returns_its_result(
    service: Service,
) -> None:
    reply = service.answer(
        "submit", {"task": "Add rate limiting to the login endpoint", "roles": ["DEV", "QA"]}
    )
    assert reply["status"] == "accepted" and reply["deliberation_id"]
    deliberation_id = reply["deliberation_id"]
    done = service.wait_for(deliberation_id, "completed")
    assert done["result"]["deliberation_id"] == deliberation_id
    assert done["result"]["status"] == "completed" and done["result"]["completed"] == 2
    assert done["flow_run_id"]

    flow_run = finished_flow_run(done["flow_run_id"])
    assert flow_run.state is not None and flow_run.state.is_completed()
    proposals = {"agent-dev-001.proposal", "agent-qa-001.proposal"}
    task_runs_of(flow_run.id, until=lambda runs: proposals <= {t.name for t in runs})

    assert_stream_agrees_with_stored_result(service.url, deliberation_id)
    progress = [e for e in _events(service.url, deliberation_id) if isinstance(e, DeliberationProgressEvent)]
    assert [(e.status, e.flow_run_id) for e in progress] == [
        ("accepted", None),
        ("started", done["flow_run_id"]),
    ]
    service.wait_until_acked()  # acked: the work queue keeps nothing


def test_get_asked_on_the_final_event_already_answers_the_outcome(service: Service) -> None:
    # The obvious client: react to deliberation.completed by asking `get` for the result.
    async def react() -> list[dict[str, Any]]:
        nc = await nats.connect(service.url)
        answers: list[dict[str, Any]] = []
        ids: set[str] = set()
        try:

            async def on_final(msg: nats.aio.msg.Msg) -> None:
                deliberation_id = json.loads(msg.data).get("deliberation_id")
                if deliberation_id not in ids:  # the subject is shared: not ours, not read
                    return
                ref = json.dumps({"deliberation_id": deliberation_id}).encode()
                answers.append(json.loads((await nc.request("deliberation.get", ref, timeout=10)).data))

            await nc.subscribe("deliberation.completed", cb=on_final)
            await nc.flush()
            for i in range(4):
                submit = {"task": f"react {i}", "roles": ["DEV", "QA"], "rounds": 0}
                reply = await nc.request("deliberation.submit", json.dumps(submit).encode(), timeout=10)
                ids.add(json.loads(reply.data)["deliberation_id"])
            give_up = time.monotonic() + 120
            while len(answers) < len(ids) and time.monotonic() < give_up:
                await asyncio.sleep(0.1)
            return answers
        finally:
            await nc.close()

    answers = asyncio.run(react())
    assert len(answers) == 4
    assert [(a["status"], (a.get("result") or {}).get("status")) for a in answers] == [("completed",) * 2] * 4


def test_submitting_the_same_id_again_returns_the_same_deliberation_and_another_request_is_refused(
    service: Service,
) -> None:
    deliberation_id = uuid.uuid4().hex
    asked = {"task": "t", "roles": ["DEV"], "deliberation_id": deliberation_id}
    assert service.answer("submit", asked)["deliberation_id"] == deliberation_id
    again = service.answer("submit", asked)
    assert again["deliberation_id"] == deliberation_id and again["status"] in (
        "accepted",
        "running",
        "completed",
    )
    other = service.ask("deliberation.submit", {**asked, "task": "another task"})
    assert other.headers is not None and other.headers[ERROR_CODE] == "409"
    assert "was submitted with a different request" in other.headers[ERROR]
    service.wait_for(deliberation_id, "completed")
    assert len(service.llm.calls_for("agent-dev-001")) == 1  # one run, one result


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"not json", "invalid input: Invalid JSON"),
        (b"", "invalid input: Invalid JSON"),
        ({"task": "   "}, "invalid task: task is empty"),
        ({"task": "t", "roles": ["DEV", "CEO"]}, "invalid roles: unknown role 'CEO'"),
        ({"task": "t", "surprise": 1}, "invalid surprise: Extra inputs are not permitted"),
        (b"x" * (MAX_PAYLOAD_BYTES + 1), "over the limit"),
    ],
)
def test_bad_input_is_refused_with_400_and_one_line_and_nothing_is_queued(
    service: Service, payload: Any, why: str
) -> None:
    reply = service.ask("deliberation.submit", payload)
    assert reply.headers is not None and reply.headers[ERROR_CODE] == "400", reply.headers
    assert why in reply.headers[ERROR] and "\n" not in reply.headers[ERROR]
    service.wait_until_acked()
    assert service.llm.calls == []
    # The service goes on serving.
    assert service.answer("submit", {"task": "t", "roles": ["DEV"]})["status"] == "accepted"


def test_get_and_cancel_of_an_unknown_id_answer_404_and_a_malformed_one_400(service: Service) -> None:
    for endpoint in ("get", "cancel"):
        unknown = service.ask(f"deliberation.{endpoint}", {"deliberation_id": "never-submitted"})
        assert unknown.headers is not None and unknown.headers[ERROR_CODE] == "404"
        bad = service.ask(f"deliberation.{endpoint}", {"deliberation_id": "../etc"})
        assert bad.headers is not None and bad.headers[ERROR_CODE] == "400"


def test_requests_get_the_services_reply_and_the_event_stream_stores_none_of_them(service: Service) -> None:
    # The events' stream exists (the service made it); a request on deliberation.submit is
    # answered by the service, not acked by JetStream, and not stored.
    reply = service.answer("submit", {"task": "t", "roles": ["DEV"]})
    assert set(reply) == {"deliberation_id", "status"}
    service.wait_for(reply["deliberation_id"], "completed")

    async def subjects() -> set[str]:
        nc = await nats.connect(service.url)
        try:
            js = nc.jetstream()
            info = await js.stream_info("DELIBERATIONS", subjects_filter=">")
            return set(info.state.subjects or {})
        finally:
            await nc.close()

    stored = asyncio.run(subjects())
    assert stored and not any(s.startswith(("deliberation.submit", "deliberation.get")) for s in stored), (
        stored
    )


def test_the_service_is_discovered_through_the_services_api(service: Service) -> None:
    ping = json.loads(request(service.url, "$SRV.PING.deliberation", b"").data)
    assert ping["name"] == "deliberation" and ping["type"] == "io.nats.micro.v1.ping_response"
    info = json.loads(request(service.url, "$SRV.INFO.deliberation", b"").data)
    assert {e["subject"] for e in info["endpoints"]} == {
        "deliberation.submit",
        "deliberation.get",
        "deliberation.cancel",
    }
    stats = json.loads(request(service.url, "$SRV.STATS.deliberation", b"").data)
    assert {e["name"] for e in stats["endpoints"]} == {"submit", "get", "cancel"}


def test_cancel_during_the_proposals_drops_the_calls_and_concludes_cancelled(service: Service) -> None:
    for agent in ("agent-qa-001", "agent-data-001"):
        service.llm.script(agent, HANG)
    reply = service.answer("submit", {"task": "t", "roles": ["DEV", "QA", "DATA"]})
    deliberation_id = reply["deliberation_id"]
    service.wait_for(deliberation_id, "running")
    wait_until(lambda: sum(1 for c in service.llm.calls if c.agent != "agent-dev-001") == 2, timeout=60)

    cancelling = service.answer("cancel", {"deliberation_id": deliberation_id})
    assert cancelling["status"] in ("running", "cancelled")
    done = service.wait_for(deliberation_id, "cancelled", timeout=60)
    assert done["result"]["status"] == "cancelled"
    assert "cancelled through the deliberation service" in done["result"]["summary"]
    held = [c for c in service.llm.calls if c.agent != "agent-dev-001"]
    wait_until(lambda: all(c.client_disconnected for c in held), timeout=10)

    flow_run = finished_flow_run(done["flow_run_id"])
    assert flow_run.state is not None and flow_run.state.is_cancelled()
    finals = [e for e in _events(service.url, deliberation_id) if isinstance(e, DeliberationEvent)]
    assert [e.subject for e in finals] == ["deliberation.cancelled"]
    # The slots are free: the next deliberation runs.
    after = service.answer("submit", {"task": "t", "roles": ["DEV"]})
    service.wait_for(after["deliberation_id"], "completed")


def test_a_deliberation_waiting_in_the_intake_is_cancelled_without_running(service: Service) -> None:
    service.llm.script("agent-qa-001", HANG, HANG)
    busy = [service.answer("submit", {"task": "t", "roles": ["QA"]})["deliberation_id"] for _ in range(2)]
    for deliberation_id in busy:  # both slots of the runner are taken
        service.wait_for(deliberation_id, "running")
    waiting = service.answer("submit", {"task": "t", "roles": ["DEV"]})["deliberation_id"]
    cancelled = service.answer("cancel", {"deliberation_id": waiting})
    assert cancelled["status"] == "cancelled"
    assert service.answer("get", {"deliberation_id": waiting})["result"]["status"] == "cancelled"
    assert_stream_agrees_with_stored_result(service.url, waiting)  # its agent's outcome too
    for deliberation_id in busy:
        service.answer("cancel", {"deliberation_id": deliberation_id})
        service.wait_for(deliberation_id, "cancelled", timeout=60)
    time.sleep(2)  # a runner that took it now finds it concluded
    assert service.llm.calls_for("agent-dev-001") == []
    service.wait_until_acked()


def test_a_decided_failure_is_concluded_failed_at_once_with_its_reason(service: Service) -> None:
    reply = service.answer("submit", {"task": "t", "roles": ["DEV"], "model": "no-such-model"})
    done = service.wait_for(reply["deliberation_id"], "failed")
    assert "model 'no-such-model' is not served" in done["reason"]
    assert done["result"]["status"] == "failed"
    service.wait_until_acked()


def test_a_request_taken_before_its_submit_recorded_it_is_still_run(service: Service) -> None:
    # A runner can take a request between the submit storing it and recording its status:
    # here the request is in the intake stream and no status exists at all.
    deliberation_id = uuid.uuid4().hex
    data = json.dumps({"task": "t", "roles": ["DEV"], "deliberation_id": deliberation_id}).encode()

    async def store() -> None:
        nc = await nats.connect(service.url)
        try:
            await nc.jetstream().publish(
                f"deliberation-intake.{deliberation_id}", data, headers={"Nats-Msg-Id": deliberation_id}
            )
        finally:
            await nc.close()

    asyncio.run(store())
    # No status until the runner takes it and records it (404 until then).
    wait_until(
        lambda: not (service.ask("deliberation.get", {"deliberation_id": deliberation_id}).headers or {}),
        timeout=60,
    )
    done = service.wait_for(deliberation_id, "completed")
    assert done["result"]["completed"] == 1
    progress = [e for e in _events(service.url, deliberation_id) if isinstance(e, DeliberationProgressEvent)]
    assert [e.status for e in progress] == ["accepted", "started"]


def test_a_runner_runs_as_many_deliberations_at_once_as_its_concurrency_says(
    fake_llm: FakeLLMServer, ray_cluster: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # More than asyncio's default thread pool holds on 2 cores (min(32, cores + 4) = 6).

    with running_service(fake_llm, monkeypatch, concurrency=8) as service:
        fake_llm.script("agent-dev-001", *[HANG] * 8)
        ids = [service.answer("submit", {"task": "t", "roles": ["DEV"]})["deliberation_id"] for _ in range(8)]
        wait_until(lambda: len(fake_llm.calls_for("agent-dev-001")) == 8, timeout=120)
        assert fake_llm.max_in_flight == 8
        for deliberation_id in ids:
            service.answer("cancel", {"deliberation_id": deliberation_id})
        for deliberation_id in ids:
            service.wait_for(deliberation_id, "cancelled", timeout=60)

"""The fleet orchestrator's deliberation RPCs over gRPC (issue 34), driven as a service
written against that API drives them: a client generated from
schemas/fleet/orchestrator/v1/orchestrator.proto, against the service in this process on a
real nats-server, real Ray, Prefect's engine and the fake model server. What it submits is
the same deliberation the NATS endpoints answer for."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from flows.runtime.embedded import free_port
from flows.service.fleet import orchestrator_pb2 as pb
from flows.service.fleet import orchestrator_pb2_grpc as pb_grpc
from tests.fake_llm import FakeLLMServer
from tests.service import Service, running_service

SERVICE = "fleet.orchestrator.v1.OrchestratorService"
TOKEN = "test-token-" + uuid.uuid4().hex


class Fleet(NamedTuple):
    service: Service
    channel: grpc.Channel
    address: str


@contextmanager
def serving(
    fake_llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, token: str | None = None
) -> Iterator[Fleet]:
    """The service with its gRPC front (and a token, if given), and a channel to it."""
    port = free_port()
    monkeypatch.setenv("DELIBERATION_GRPC_PORT", str(port))
    if token is not None:
        monkeypatch.setenv("DELIBERATION_GRPC_TOKEN", token)
        monkeypatch.setenv("DELIBERATION_GRPC_HOST", "127.0.0.1")
    with (
        running_service(fake_llm, monkeypatch) as service,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield Fleet(service, channel, f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
def fleet(ray_cluster: None) -> Iterator[Fleet]:
    """One service for the module's tests: each asks for deliberations of its own."""
    fake_llm = FakeLLMServer().start()
    try:
        with pytest.MonkeyPatch.context() as monkeypatch, serving(fake_llm, monkeypatch) as running:
            yield running
    finally:
        fake_llm.stop()


def council(task_id: str = "", **fields: Any) -> pb.DeliberateRequest:
    defaults: dict[str, Any] = {"task_description": "Add rate limiting to the login endpoint", "role": "DEV"}
    return pb.DeliberateRequest(task_id=task_id, **(defaults | fields))


def test_deliberate_answers_when_it_concludes_with_every_proposal_ranked_and_nats_agrees(
    fleet: Fleet,
) -> None:
    service, channel, _ = fleet
    stub = pb_grpc.OrchestratorServiceStub(channel)
    constraints = pb.TaskConstraints(rubric="Be safe", requirements=["Tests"], metadata={"repo": "login"})
    reply = stub.Deliberate(council("TASK-7", constraints=constraints, num_agents=3), timeout=120)
    assert reply.task_id == "TASK-7"
    assert [r.rank for r in reply.results] == [1, 2, 3]
    assert {r.proposal.author_id for r in reply.results} == {
        "agent-dev-001",
        "agent-dev-002",
        "agent-dev-003",
    }
    assert all(r.proposal.author_role == "DEV" and r.proposal.content for r in reply.results)
    assert reply.winner_id == reply.results[0].proposal.author_id
    assert reply.duration_ms > 0
    checks = {c.check_type for c in reply.results[0].checks.additional_checks}
    assert {"complete", "requirements"} <= checks
    assert reply.metadata.orchestrator_version.startswith("deliberation ")
    assert reply.metadata.tags["repo"] == "login"
    # The same deliberation on NATS, by the task id: concluded, its flow run the execution id.
    got = service.answer("get", {"deliberation_id": "TASK-7"})
    assert got["status"] == "completed"
    assert got["flow_run_id"] == reply.metadata.execution_id
    assert got["result"]["winner"]["agent_id"] == reply.winner_id


def test_backlog_review_answers_at_once_and_the_result_follows_by_task_id(
    fleet: Fleet,
) -> None:
    _, channel, _ = fleet
    stub = pb_grpc.OrchestratorServiceStub(channel)
    task_id = "backlog/" + uuid.uuid4().hex  # not an id of ours: its digest is
    submitted = stub.DeliberateForBacklogReview(council(task_id), timeout=30)
    assert submitted.task_id == task_id and not submitted.results
    deadline = time.monotonic() + 120
    while True:
        got = stub.GetDeliberationResult(pb.GetDeliberationResultRequest(task_id=task_id), timeout=30)
        if got.status not in (pb.DELIBERATION_STATUS_PENDING, pb.DELIBERATION_STATUS_IN_PROGRESS):
            break
        assert time.monotonic() < deadline, got
        time.sleep(0.5)
    assert got.status == pb.DELIBERATION_STATUS_COMPLETED, got
    assert len(got.results) == 3 and got.winner_id and not got.error_message
    # The same task id and request again: the same deliberation, not a second one.
    again = stub.DeliberateForBacklogReview(council(task_id), timeout=30)
    assert again.task_id == task_id
    assert again.metadata.execution_id == got.metadata.execution_id


def test_a_stream_delivers_each_proposal_as_it_finishes_then_complete(
    fleet: Fleet,
) -> None:
    _, channel, _ = fleet
    stub = pb_grpc.OrchestratorServiceStub(channel)
    updates = list(stub.StreamDeliberation(council(uuid.uuid4().hex, num_agents=3), timeout=120))
    assert updates[0].current_step == "accepted"
    assert updates[-1].status == "complete" and updates[-1].progress_percent == 100
    partial = [u.partial_result.proposal.author_id for u in updates if u.HasField("partial_result")]
    assert sorted(partial) == ["agent-dev-001", "agent-dev-002", "agent-dev-003"]
    statuses = [u.status for u in updates]
    assert statuses.index("reviewing") > max(i for i, u in enumerate(updates) if u.HasField("partial_result"))
    assert "scoring" in statuses
    progress = [u.progress_percent for u in updates]
    assert progress == sorted(progress)


def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error = raised.value
    return error.code(), error.details()


def test_bad_input_gets_its_status_code_and_one_line(fleet: Fleet) -> None:
    _, channel, _ = fleet
    stub = pb_grpc.OrchestratorServiceStub(channel)
    code, details = code_of(lambda: stub.DeliberateForBacklogReview(council(role="CEO"), timeout=10))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and details.startswith("unknown role 'CEO'")
    code, details = code_of(
        lambda: stub.DeliberateForBacklogReview(council(task_description="  "), timeout=10)
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "task is empty" in details
    code, details = code_of(
        lambda: stub.GetDeliberationResult(
            pb.GetDeliberationResultRequest(task_id="never-submitted"), timeout=10
        )
    )
    assert code is grpc.StatusCode.NOT_FOUND and details == "no deliberation never-submitted"
    task_id = uuid.uuid4().hex
    stub.DeliberateForBacklogReview(council(task_id), timeout=30)
    code, details = code_of(lambda: stub.DeliberateForBacklogReview(council(task_id, role="QA"), timeout=10))
    assert code is grpc.StatusCode.ALREADY_EXISTS and "different request" in details
    other = channel.unary_unary(f"/{SERVICE}/RegisterCouncil")
    code, details = code_of(lambda: other(b"", timeout=10))
    assert code is grpc.StatusCode.UNIMPLEMENTED and details.startswith("RegisterCouncil is not served here")
    for message in (details,):
        assert "\n" not in message


def test_health_reflection_and_status_answer(fleet: Fleet) -> None:
    _, channel, _ = fleet
    health = health_pb2_grpc.HealthStub(channel)
    checked = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
    assert checked.status == health_pb2.HealthCheckResponse.SERVING
    listed = next(
        iter(
            reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
            )
        )
    )
    assert SERVICE in {s.name for s in listed.list_services_response.service}
    stub = pb_grpc.OrchestratorServiceStub(channel)
    with_stats = pb.GetStatusRequest(include_stats=True)
    before = stub.GetStatus(with_stats, timeout=10)
    stub.DeliberateForBacklogReview(council(uuid.uuid4().hex, num_agents=2), timeout=30)
    status = stub.GetStatus(with_stats, timeout=10)
    assert status.status == "SERVING"
    # The process's counts (flows/runtime/metrics.py): this test's submit among them.
    assert status.stats.total_deliberations == before.stats.total_deliberations + 1
    assert status.stats.role_counts["DEV"] == before.stats.role_counts.get("DEV", 0) + 2


def test_with_a_token_a_call_without_it_is_unauthenticated(
    fake_llm: FakeLLMServer, ray_cluster: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serving(fake_llm, monkeypatch, token=TOKEN) as (_, channel, _):
        stub = pb_grpc.OrchestratorServiceStub(channel)
        code, details = code_of(lambda: stub.GetStatus(pb.GetStatusRequest(), timeout=10))
        assert code is grpc.StatusCode.UNAUTHENTICATED and "bearer token" in details
        wrong = (("authorization", "Bearer nope"),)
        code, _ = code_of(lambda: stub.GetStatus(pb.GetStatusRequest(), timeout=10, metadata=wrong))
        assert code is grpc.StatusCode.UNAUTHENTICATED
        right = (("authorization", f"Bearer {TOKEN}"),)
        assert stub.GetStatus(pb.GetStatusRequest(), timeout=10, metadata=right).status == "SERVING"
        # Health checks need no token: a probe carries none.
        checked = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert checked.status == health_pb2.HealthCheckResponse.SERVING


NODE_CLIENT = Path(__file__).resolve().parents[1] / "node"
PROTO_ROOT = Path(__file__).resolve().parents[2] / "schemas"


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_a_node_client_loaded_from_the_proto_alone_deliberates_streams_and_gets_each_code(
    fleet: Fleet,
) -> None:
    service, channel, _ = fleet
    assert (NODE_CLIENT / "node_modules" / "@grpc").is_dir(), (
        "run ./dev test, which installs tests/node's packages"
    )
    address = channel._channel.target().decode()  # type: ignore[attr-defined]
    node = subprocess.run(
        ["node", str(NODE_CLIENT / "fleet_client.mjs"), address, str(PROTO_ROOT)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert node.returncode == 0, node.stderr
    seen = json.loads(node.stdout.strip().splitlines()[-1])
    assert seen["deliberated"].startswith("agent-qa-")
    assert seen["backlog"] == "DELIBERATION_STATUS_COMPLETED"
    assert seen["streamed"] == 3
    codes = seen["codes"]
    assert codes["invalid"][0] == "INVALID_ARGUMENT" and codes["invalid"][1].startswith("unknown role")
    assert codes["not_found"] == ["NOT_FOUND", "no deliberation never-submitted"]
    assert codes["exists"][0] == "ALREADY_EXISTS"
    assert codes["unimplemented"][0] == "UNIMPLEMENTED"
    assert codes["unimplemented"][1].startswith("ListCouncils is not served here")


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost / 127.0.0.1 and its key, PEM."""
    import ipaddress
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert, private = directory / "server.pem", directory / "server.key"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, private


def test_with_tls_a_client_that_trusts_its_certificate_is_served_and_plain_text_is_not(
    fake_llm: FakeLLMServer, ray_cluster: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("DELIBERATION_GRPC_TLS_CERT_FILE", str(cert))
    monkeypatch.setenv("DELIBERATION_GRPC_TLS_KEY_FILE", str(key))
    monkeypatch.setenv("DELIBERATION_GRPC_HOST", "127.0.0.1")
    with serving(fake_llm, monkeypatch) as (_, plain, address):
        trusted = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(address, trusted) as channel:
            status = pb_grpc.OrchestratorServiceStub(channel).GetStatus(pb.GetStatusRequest(), timeout=10)
            assert status.status == "SERVING"
        code, _ = code_of(
            lambda: pb_grpc.OrchestratorServiceStub(plain).GetStatus(pb.GetStatusRequest(), timeout=5)
        )
        assert code is grpc.StatusCode.UNAVAILABLE

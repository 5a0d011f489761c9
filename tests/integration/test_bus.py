"""The event bus against a real nats-server with JetStream."""

import asyncio
import re
import uuid
from pathlib import Path

import nats
import pytest
from nats.js.api import DiscardPolicy, StorageType, StreamInfo
from pydantic import SecretStr

from agents.adapters.nats import EventBus
from agents.errors import EventBusError
from agents.events import AGENT_RESPONSE_FAILED, STREAM_SUBJECTS, agent_event
from agents.settings import bus_config_for
from flows.runtime.embedded import LocalNatsServer, free_port
from tests.certificates import make_certificates
from tests.factories import failed
from tests.nats_jwt import OperatorNatsServer


def streams(nats_url: str) -> dict[str, StreamInfo]:
    """Our event streams, as JetStream itself reports them, by name."""

    async def read() -> list[StreamInfo]:
        nc = await nats.connect(nats_url, connect_timeout=5)
        try:
            return await nc.jetstream(timeout=5).streams_info()
        finally:
            await nc.close()

    return {info.config.name: info for info in asyncio.run(read()) if info.config.name in STREAM_SUBJECTS}


def test_streams_are_created_idempotently(nats_url: str) -> None:
    config = bus_config_for(nats_url)
    deliberation_id = uuid.uuid4().hex
    with EventBus.connect(config) as bus:
        bus.publish(agent_event(deliberation_id, "t", failed()))
    first = streams(nats_url)
    with EventBus.connect(config) as bus:
        kept = bus.read_events(deliberation_id)
    second = streams(nats_url)
    assert first.keys() == second.keys() == STREAM_SUBJECTS.keys()
    for name, subjects in STREAM_SUBJECTS.items():
        stream = second[name].config
        assert stream.subjects == subjects
        assert (stream.max_age, stream.duplicate_window) == (
            config.stream_max_age_seconds,
            config.stream_duplicate_window_seconds,
        )
        assert (stream.storage, stream.discard, stream.num_replicas) == (
            StorageType(config.stream_storage),
            DiscardPolicy(config.stream_discard),
            config.stream_replicas,
        )
        # Connecting again found the stream and left it be: not recreated, nothing lost.
        assert second[name].created == first[name].created
    assert len(kept) == 1


def test_changed_retention_updates_the_existing_stream(nats_url: str) -> None:
    def max_ages() -> dict[str, float | None]:
        return {name: info.config.max_age for name, info in streams(nats_url).items()}

    EventBus.connect(bus_config_for(nats_url, stream_max_age_seconds=3600)).close()
    assert max_ages() == dict.fromkeys(STREAM_SUBJECTS, 3600.0)
    default = bus_config_for(nats_url)
    EventBus.connect(default).close()
    assert max_ages() == dict.fromkeys(STREAM_SUBJECTS, default.stream_max_age_seconds)


def test_publish_is_acked_and_a_second_copy_is_dropped(nats_url: str) -> None:
    deliberation_id = uuid.uuid4().hex
    event = agent_event(deliberation_id, "t", failed(duration_ms=3))
    with EventBus.connect(bus_config_for(nats_url)) as bus:
        first = bus.publish(event)
        second = bus.publish(event)
        stored = bus.read_events(deliberation_id)
    assert (first.duplicate, second.duplicate) == (False, True)
    assert first.seq == second.seq
    assert [e.subject for e in stored] == [AGENT_RESPONSE_FAILED]
    assert stored[0] == event


def test_unreachable_nats_is_a_clear_error() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(EventBusError, match=f"cannot reach NATS at {url}"):
        EventBus.connect(bus_config_for(url, connect_timeout=1))


class _NatsWithAuth(LocalNatsServer):
    def __init__(self, *auth: str) -> None:
        super().__init__()
        self.auth = list(auth)

    def command(self) -> list[str]:
        return super().command() + self.auth


def test_user_password_in_the_url_and_a_wrong_one_is_refused_without_echo() -> None:
    with _NatsWithAuth("--user", "council", "--pass", "s3cret-pw") as server:
        good = server.url.replace("nats://", "nats://council:s3cret-pw@")
        EventBus.connect(bus_config_for(good)).close()
        bad = server.url.replace("nats://", "nats://council:wrong-pw@")
        with pytest.raises(EventBusError) as caught:
            EventBus.connect(bus_config_for(bad, connect_timeout=2))
        log = server.log_path.read_text()
    assert "wrong-pw" not in str(caught.value) and "council" not in str(caught.value)
    assert f"cannot reach NATS at nats://127.0.0.1:{server.port}" in str(caught.value)
    # The server's error, or the reset that follows it when the client reads that first
    # (see test_creds_file_authentication_in_operator_mode); its log says which it was.
    assert re.search("Authorization Violation|Connection reset", str(caught.value))
    assert "authentication error" in log


def test_token_authentication(nats_url: str) -> None:
    with _NatsWithAuth("--auth", "tok-123") as server:
        EventBus.connect(bus_config_for(server.url, token=SecretStr("tok-123"))).close()
        with pytest.raises(EventBusError) as caught:
            EventBus.connect(bus_config_for(server.url, token=SecretStr("tok-999"), connect_timeout=2))
    assert "tok-999" not in str(caught.value)


def test_tls_with_the_servers_ca_and_a_token(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    tls = ["--tls", "--tlscert", str(certs.cert), "--tlskey", str(certs.key), "--auth", "tls-tok-42"]
    deliberation_id = uuid.uuid4().hex
    with _NatsWithAuth(*tls) as server:
        url = server.url.replace("nats://", "tls://")
        config = bus_config_for(url, token=SecretStr("tls-tok-42"), tls_ca_file=certs.ca)
        with EventBus.connect(config) as bus:
            bus.publish(agent_event(deliberation_id, "t", failed()))
            assert len(bus.read_events(deliberation_id)) == 1
        # Without the CA the server's certificate is not trusted: refused, and said why.
        with pytest.raises(EventBusError) as caught:
            EventBus.connect(bus_config_for(url, token=SecretStr("tls-tok-42"), connect_timeout=2))
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value) and "tls-tok-42" not in str(caught.value)


def test_unreadable_tls_files_are_a_clear_error(tmp_path: Path, nats_url: str) -> None:
    with pytest.raises(EventBusError, match="cannot load the NATS TLS files"):
        EventBus.connect(
            bus_config_for(nats_url.replace("nats://", "tls://"), tls_ca_file=tmp_path / "none.pem")
        )


def test_creds_file_authentication_in_operator_mode(tmp_path: Path) -> None:
    with OperatorNatsServer(tmp_path) as server:
        with EventBus.connect(bus_config_for(server.url, creds_file=server.setup.creds)) as bus:
            bus.publish(agent_event(uuid.uuid4().hex, "t", failed()))
        # The server sends `-ERR 'Authorization Violation'` and closes at once; the client
        # sees either that error or the reset, depending on which it reads first.
        with pytest.raises(EventBusError, match="Authorization Violation|Connection reset"):
            EventBus.connect(bus_config_for(server.url, connect_timeout=2))
        assert "authentication error" in server.log_path.read_text()

"""`python -m flows.provision`, the cluster's setup job, against a fresh nats-server."""

from __future__ import annotations

import asyncio

import nats
import pytest

from agents.adapters.nats import RESULTS_BUCKET
from agents.events import STREAM_SUBJECTS
from flows.provision import main
from flows.runtime.embedded import LocalNatsServer, free_port


async def _limits(url: str) -> tuple[dict[str, float], float]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        ages = {name: (await js.stream_info(name)).config.max_age or 0.0 for name in STREAM_SUBJECTS}
        bucket = await js.key_value(RESULTS_BUCKET)
        return ages, (await bucket.status()).ttl or 0.0
    finally:
        await nc.close()


def test_provision_creates_the_streams_and_the_bucket_with_the_configured_limits(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with LocalNatsServer() as server:
        monkeypatch.setenv("NATS_URL", server.url)
        monkeypatch.setenv("DELIBERATION_STREAM_MAX_AGE_SECONDS", "3600")
        monkeypatch.setenv("DELIBERATION_RESULTS_MAX_AGE_SECONDS", "86400")
        assert main([]) == 0
        assert main([]) == 0  # a rerun of the job changes nothing and still succeeds
        ages, ttl = asyncio.run(_limits(server.url))
    assert ages == {name: 3600.0 for name in STREAM_SUBJECTS}
    assert ttl == 86400.0
    assert f"buckets {RESULTS_BUCKET}, DELIBERATION_CALLS" in capsys.readouterr().out


def test_provision_against_an_unreachable_server_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NATS_URL", f"nats://127.0.0.1:{free_port()}")
    monkeypatch.setenv("DELIBERATION_NATS_CONNECT_TIMEOUT", "1")
    assert main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("provision: cannot reach NATS"), err

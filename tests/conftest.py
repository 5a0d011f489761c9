"""Real components for the tests: nats-server, Ray, Prefect's engine and test API, and an
OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Before Prefect is imported: isolated state (database, persisted results), no telemetry,
# and none of the developer's own endpoints.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="deliberation-tests-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DELIBERATION_STATE_DIR"] = tempfile.mkdtemp(prefix="deliberation-state-")
for variable in ("PREFECT_API_URL", "VLLM_URL", "VLLM_MODEL", "NATS_URL", "RAY_ADDRESS", "VLLM_API_KEY"):
    os.environ.pop(variable, None)

import pytest  # noqa: E402

from agents.adapters.nats import EventBus  # noqa: E402
from agents.events import Event  # noqa: E402
from agents.settings import bus_config_for  # noqa: E402
from flows.runtime.embedded import LocalNatsServer  # noqa: E402
from tests.fake_llm import FakeLLMServer  # noqa: E402


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    with LocalNatsServer() as server:
        yield server.url


@pytest.fixture
def fake_llm() -> Iterator[FakeLLMServer]:
    server = FakeLLMServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # As on the CLI's temporary API (flows/runtime/prefect_api.py): no heartbeats that nothing reads,
    # and no wait for the heartbeat thread at the end of every flow run.
    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@pytest.fixture(scope="session")
def ray_cluster(prefect_api: None) -> Iterator[None]:
    import ray

    # Started once: the flow's RayTaskRunner reuses a running Ray and leaves it up.
    from flows.runtime.ray_setup import init_ray

    init_ray(None, num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture
def pipeline(
    monkeypatch: pytest.MonkeyPatch, fake_llm: FakeLLMServer, nats_url: str, ray_cluster: None
) -> FakeLLMServer:
    """Environment for running the `deliberate` flow against the fake model server."""
    monkeypatch.setenv("VLLM_URL", fake_llm.url)
    monkeypatch.setenv("NATS_URL", nats_url)
    monkeypatch.setenv("DELIBERATION_RETRY_BACKOFF_SECONDS", "0.2")
    return fake_llm


@pytest.fixture
def read_events(nats_url: str) -> Callable[[str], list[Event]]:
    def read(deliberation_id: str) -> list[Event]:
        with EventBus.connect(bus_config_for(nats_url)) as bus:
            return bus.read_events(deliberation_id)

    return read


@pytest.fixture
def service(fake_llm: FakeLLMServer, ray_cluster: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The deliberation service in this process, on a nats-server of its own (tests.service)."""
    from tests.service import running_service

    with running_service(fake_llm, monkeypatch) as running:
        yield running


# Figures a test measured that CI's log should show, never assert (the machines are noisy):
# a test appends lines with `print_in_summary`; the session's end prints them all, from
# whichever xdist worker they came.
FIGURES = Path(__file__).resolve().parent.parent / ".pytest-figures.txt"


def print_in_summary(line: str) -> None:
    with FIGURES.open("a") as out:
        out.write(line.rstrip("\n") + "\n")


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):  # the controller, or a run without xdist
        FIGURES.unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES.exists():
        terminalreporter.section("figures measured (printed, not asserted)")
        for line in FIGURES.read_text().splitlines():
            terminalreporter.write_line(line)

"""The embedded defaults: with no VLLM_URL the CLI serves the bundled SmolLM2 model itself
(and, with no PREFECT_API_URL, runs its own temporary Prefect API); both end with it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from agents.events import AgentResponseEvent, Event
from flows.runtime.embedded import LOCAL_MODEL_ALIAS, LocalModelServer

pytest.importorskip("llama_cpp", reason="the local extra is not installed (./dev installs it)")

ROOT = Path(__file__).resolve().parents[2]
MODEL_SERVER_STARTED = r"started the local model server at http://127.0.0.1:(\d+)"
PREFECT_API_STARTED = r"started a temporary Prefect API at http://127.0.0.1:(\d+)"


def test_local_model_server_answers_and_stops() -> None:
    import httpx

    with LocalModelServer() as server:
        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == [LOCAL_MODEL_ALIAS]
        port = server.port
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)


def test_the_bundled_model_s_ballots_are_held_to_their_json_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from agents.adapters.llm import ChatClient
    from agents.models import DeliberationRequest
    from agents.planning import plan_council
    from agents.prompts import ranking_messages
    from agents.ranking import ballot_from_answer, ballot_schema
    from agents.settings import Settings
    from flows.runtime.preflight import check_default_endpoint

    request = DeliberationRequest(task="Write a Python factorial function", roles=["DEV", "QA", "ARCHITECT"])
    reviewer = plan_council(request)[0]
    shown = {
        "A": "def factorial(n: int) -> int:\n    return 1 if n < 2 else n * factorial(n - 1)",
        "B": "Use a loop.",
    }
    with LocalModelServer() as server:
        monkeypatch.setenv("VLLM_URL", server.url)
        endpoint = check_default_endpoint(Settings())
        assert endpoint.structured_output == "json_object"  # llama-cpp-python's, from its /v1/models

        async def ballots() -> list[str]:
            async with ChatClient(endpoint) as client:
                return [
                    (
                        await client.complete(
                            ranking_messages(request, reviewer, shown, as_json=True),
                            temperature=temperature,
                            max_tokens=120,
                            schema=("ranking", ballot_schema(list(shown))),
                        )
                    ).content
                    for temperature in (0.2, 1.0)
                ]

        for answer in asyncio.run(ballots()):
            ballot = ballot_from_answer(
                reviewer.agent_id, {"A": "agent-qa-001", "B": "agent-architect-001"}, answer, True
            )
            assert ballot.abstained is None, answer
            assert sorted(ballot.order) == ["agent-architect-001", "agent-qa-001"], answer


@pytest.mark.slow
def test_cli_deliberates_on_the_bundled_model(
    nats_url: str, read_events: Callable[[str], list[Event]], tmp_path: Path
) -> None:
    deliberation_id = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_URL", "VLLM_CONTEXT_WINDOW")}
    env["NATS_URL"] = nats_url
    # A file of ~8,500 tokens: the default budget (4,000, estimated) would overflow the
    # model's 2,048, and every call be refused; it gets a quarter of the window instead.
    big = tmp_path / "numbers.py"
    big.write_text(
        "".join(f"def add_{i}(a: int, b: int) -> int:\n    return a + b + {i}\n\n" for i in range(300))
    )
    proc = subprocess.run(
        [sys.executable, "-m", "flows.deliberate", "Write a Python function that adds two numbers"]
        # --verbose: the servers' "started ... at" lines, which name their ports, on stderr.
        + [
            "--roles",
            "DEV,QA",
            "--max-tokens",
            "48",
            "--deliberation-id",
            deliberation_id,
            "--context",
            str(big),
            "--json",
            "--verbose",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["status"] == "completed"
    assert any(gap.startswith("context over its budget of 512 tokens") for gap in result["incomplete"])
    for outcome in result["outcomes"]:
        proposal = outcome["proposal"]
        assert proposal["content"].strip()
        assert proposal["model"] == LOCAL_MODEL_ALIAS
        assert proposal["prompt_tokens"] > 0 and 0 < proposal["completion_tokens"] <= 48
    events = read_events(deliberation_id)
    assert sorted(e.agent_id for e in events if isinstance(e, AgentResponseEvent)) == [
        "agent-dev-001",
        "agent-qa-001",
    ]
    # The model server and the Prefect API the CLI started are gone with it.
    for started in (MODEL_SERVER_STARTED, PREFECT_API_STARTED):
        port = re.search(started, proc.stderr)
        assert port, proc.stderr[-2000:]
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", int(port.group(1))), timeout=1)


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_cli_leaves_no_model_server_or_prefect_api_behind(
    nats_url: str, stop_signal: int
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VLLM_URL"}
    env["NATS_URL"] = nats_url
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.deliberate", "Write a long essay", "--roles", "DEV", "--verbose"]
        + ["--max-tokens", "2000", "--timeout", "600"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    ports = []
    for line in proc.stderr:
        for started in (MODEL_SERVER_STARTED, PREFECT_API_STARTED):
            if port := re.search(started, line):
                ports.append(int(port.group(1)))
        if "Beginning flow run" in line:
            break
    assert len(ports) == 2
    proc.send_signal(stop_signal)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    if stop_signal == signal.SIGINT:
        assert proc.returncode == 130
    for port in ports:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1)

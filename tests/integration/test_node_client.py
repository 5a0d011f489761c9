"""A client that is not ours drives the service: the official NATS JavaScript client
(@nats-io/transport-node, @nats-io/services) on Node.js discovers it, submits, gets, cancels,
and checks every reply against the JSON Schemas in schemas/ (tests/node/client.mjs)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from flows.schemas import SCHEMA_DIR
from tests.fake_llm import HANG

NODE_CLIENT = Path(__file__).resolve().parents[1] / "node"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")


def test_a_node_service_submits_discovers_gets_and_cancels_over_nats_alone(service: Any) -> None:
    assert (NODE_CLIENT / "node_modules").is_dir(), "run ./dev test, which installs tests/node's packages"
    service.llm.script("agent-data-001", HANG)  # the second deliberation, to be cancelled
    node = subprocess.run(
        ["node", str(NODE_CLIENT / "client.mjs"), service.url, str(SCHEMA_DIR)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert node.returncode == 0, node.stderr
    seen = json.loads(node.stdout.strip().splitlines()[-1])
    assert seen["services"] == 1 and seen["cancelled"] == "cancelled"
    assert seen["submits"] >= 3  # the two deliberations and the refused empty task, as STATS counts them
    assert service.answer("get", {"deliberation_id": seen["completed"]})["status"] == "completed"

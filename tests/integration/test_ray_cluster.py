"""A Ray cluster of two nodes on one machine, each started by `ray start` in its own
process tree as KubeRay starts pods: the CLI connects with Ray Client (`ray://`), as the
Prefect worker does on Kubernetes, ships this checkout's code in a runtime env, and
Ray's state API shows the model calls ran on both nodes with that code."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flows.runtime.embedded import free_port
from tests.fake_llm import FakeLLMServer

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


@dataclass
class TwoNodeRay:
    temp_dir: Path
    env: dict[str, str]
    gcs_port: int = field(default_factory=free_port)
    client_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats", "--block"]
        self._start(
            "--head",
            f"--port={self.gcs_port}",
            f"--ray-client-server-port={self.client_port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--temp-dir={self.temp_dir}",
            *common,
        )
        self._wait_for(lambda: len(self.alive_nodes()) == 1, "the head node")
        self._start(f"--address=127.0.0.1:{self.gcs_port}", *common)
        self._wait_for(lambda: len(self.alive_nodes()) == 2, "the second node")

    def _start(self, *args: str) -> None:
        log = (self.temp_dir / f"ray-start-{len(self.processes)}.log").open("wb")
        argv = [RAY, "start", *args]
        # Its own session: stop() signals the whole tree, as Kubernetes stops a pod.
        process = subprocess.Popen(
            argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(process)

    def _wait_for(self, condition: Any, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.processes):
                pytest.fail(f"`ray start` exited while waiting for {what}: see {self.temp_dir}")
            try:
                if condition():
                    return
            except subprocess.CalledProcessError:
                pass  # the dashboard is not up yet
            time.sleep(1)
        pytest.fail(f"{what} did not come up in {timeout:.0f} s")

    def state(self, kind: str, *filters: str) -> list[dict[str, Any]]:
        """`ray list KIND` through the dashboard's state API, as an operator would run it."""
        argv = [RAY, "list", kind, "--address", f"http://127.0.0.1:{self.dashboard_port}"]
        argv += ["--detail", "--format", "json", "--limit", "10000"]
        for condition in filters:
            argv += ["--filter", condition]
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60, check=True)
        if proc.stdout.startswith("No resource"):  # what it prints instead of an empty list
            return []
        rows: list[dict[str, Any]] = json.loads(proc.stdout)
        return rows

    def alive_nodes(self) -> list[dict[str, Any]]:
        return self.state("nodes", "state=ALIVE")

    def stop(self) -> None:
        # Not `ray stop`: it stops every Ray on the machine, the test session's included.
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for pid in self.leftover_pids():
            os.kill(pid, signal.SIGKILL)

    def leftover_pids(self) -> list[int]:
        """Processes of this cluster still running (Ray names its session under temp_dir)."""
        marker = str(self.temp_dir).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if marker in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
                except OSError:
                    continue  # exited meanwhile
        return found


@pytest.fixture
def two_node_ray() -> Iterator[TwoNodeRay]:
    # Ray's unix sockets live under the temp dir: pytest's tmp_path is too long for them.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    # Token auth with one shared token, as deploy/ wires it from a Secret into every pod.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    # Ray Client starts a server process per client and waits 30 s for its channel; with both
    # cores busy with another test worker's cold starts that ran out once in CI ("Initialization
    # failure from server" after 33 s). The nodes themselves get 120 s here too.
    env["RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S"] = "120"
    cluster = TwoNodeRay(temp_dir, env)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        leftovers = cluster.leftover_pids()
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not leftovers, f"Ray processes left behind: {leftovers}"


@pytest.mark.slow
def test_agent_tasks_run_on_both_nodes_of_a_ray_cluster(
    two_node_ray: TwoNodeRay, fake_llm: FakeLLMServer, nats_url: str, prefect_api: None
) -> None:
    from prefect.settings import PREFECT_API_URL

    deliberation_id = uuid.uuid4().hex
    env = {
        **two_node_ray.env,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "VLLM_URL": fake_llm.url,
        "NATS_URL": nats_url,
        # One whole CPU per call host on 1-CPU nodes: the two hosts cannot share a node.
        "DELIBERATION_AGENT_CPUS": "1",
        # Two calls would need one host; one host per call puts them on both nodes.
        "DELIBERATION_CALLS_PER_HOST": "1",
    }
    argv = [sys.executable, "-m", "flows.deliberate", "Add rate limiting to the login endpoint"]
    argv += ["--roles", "DEV,QA", "--rounds", "0", "--ray-address", two_node_ray.client_address]
    argv += ["--deliberation-id", deliberation_id, "--json"]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["status"] == "completed" and result["completed"] == 2

    # Each model call is a method call on a call host; the hosts spread over the nodes.
    tasks = two_node_ray.state("tasks", "name=CallHost.run")
    assert sorted(t["state"] for t in tasks) == ["FINISHED", "FINISHED"], tasks
    nodes = {n["node_id"] for n in two_node_ray.alive_nodes()}
    assert {t["node_id"] for t in tasks} == nodes and len(nodes) == 2
    # The workers ran the code this checkout shipped, not a copy from their own install.
    for task in tasks:
        shipped = json.loads(task["runtime_env_info"]["serialized_runtime_env"])["py_modules"]
        assert len(shipped) == 3 and all(uri.startswith("gcs://_ray_pkg_") for uri in shipped)

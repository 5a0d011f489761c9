"""A real Prefect server and a process worker, as prefect.yaml's deployments run on them:
the deployment tests (tests/integration/test_deployments.py), the deployment benchmark
(bench/deployment_run.py) and the service's burst (bench/service_burst.py) start the same
ones."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from flows.runtime.embedded import ManagedProcess

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


DEPLOYED_SERVER = ROOT / "deploy/k8s/base/prefect-server.yaml"


def deployed_settings(manifest: Path = DEPLOYED_SERVER) -> dict[str, str]:
    """The Prefect server's settings as deploy/k8s gives them (its container's plain `value`
    entries; secrets and references are the cluster's own)."""
    for document in yaml.safe_load_all(manifest.read_text()):
        if not document or document.get("kind") != "Deployment":
            continue
        for container in document["spec"]["template"]["spec"]["containers"]:
            if container["name"] == "prefect-server":
                return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}
    raise ValueError(f"{manifest}: no prefect-server container")


class PrefectServer(ManagedProcess):
    """`prefect server start` on 127.0.0.1, with `env` over ours; `ui=False` serves the API
    only."""

    name = "prefect-server"

    def __init__(
        self,
        startup_timeout: float,
        env: dict[str, str] | None = None,
        ui: bool = True,
        executable: str = PREFECT,
    ) -> None:
        super().__init__(startup_timeout, env)
        self.ui = ui
        self.executable = executable  # another environment's `prefect`: its Python, say

    @classmethod
    def on_database(
        cls, database_url: str | None, startup_timeout: float = 180.0, executable: str = PREFECT
    ) -> PrefectServer:
        """As deploy/k8s runs it (its settings, no UI), with a PREFECT_HOME of its own:
        on `database_url`, or on SQLite in that home."""
        server = cls(startup_timeout, ui=False, executable=executable)
        home = server.workdir / "home"
        server.env = deployed_settings() | {
            "PREFECT_HOME": str(home),
            "PREFECT_API_DATABASE_CONNECTION_URL": database_url
            or f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        }
        return server

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def command(self) -> list[str]:
        command = [self.executable, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        return command if self.ui else [*command, "--no-ui"]

    def is_ready(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


class PrefectWorker(ManagedProcess):
    name = "prefect-worker"

    def command(self) -> list[str]:
        return [PREFECT, "worker", "start", "--pool", "deliberation"]

    def is_ready(self) -> bool:
        return True


def prefect(env: dict[str, str], *args: str) -> None:
    """The `prefect` command line from the repository root, with `env` over ours."""
    proc = subprocess.run(
        [PREFECT, *args], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def api(
    env: dict[str, str], method: str, path: str, body: Any = None, retry_on: tuple[int, ...] = (429, 503)
) -> Any:
    """A call to the API at env["PREFECT_API_URL"]; its JSON answer. Asked again, with a
    backoff, while the server answers a status of `retry_on`."""
    # The server answers 503 while its SQLite database is busy (say, the scheduler writing
    # the nightly runs); Prefect's own client retries those, and so does this helper.
    for attempt in range(6):
        response = httpx.request(method, env["PREFECT_API_URL"] + path, json=body, timeout=30)
        if response.status_code not in retry_on or attempt == 5:
            break
        time.sleep(0.5 * 2**attempt)
    response.raise_for_status()
    return response.json()


def run_deployment(env: dict[str, str], deployment_id: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """A flow run of the deployment (as the UI's Run does); the worker picks it up."""
    return dict(api(env, "POST", f"/deployments/{deployment_id}/create_flow_run", {"parameters": parameters}))


def wait_for_final_state(
    env: dict[str, str], flow_run_id: str, timeout: float, poll_seconds: float = 1.0
) -> dict[str, Any]:
    """The flow run's state once it is final (completed, failed, crashed, cancelled)."""
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        state = api(env, "GET", f"/flow_runs/{flow_run_id}")["state"]
        if state and state["type"] in FINAL_STATES:
            return dict(state)
        time.sleep(poll_seconds)
    raise TimeoutError(f"flow run {flow_run_id} did not finish within {timeout} s")

"""Issue 23: a deployment's run on a worker and a CLI run get the same task runner from the
same place (the `deliberate` flow's HostedRayTaskRunner, which starts Ray by init_ray).
Side by side, the same request run both ways against one Prefect server: time to result,
peak memory (PSS) of each run's process tree, and the kinds of process the tree held at
that peak, which show the Ray settings (a dashboard's modules or a log monitor would be
there if one run started Ray otherwise). See BENCHMARKS.md.

    .venv/bin/python -m bench.deployment_run [--repeats N]
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.run import OUTPUT_TOKENS, ROOT, TTFT, EmulatorProcess, print_rows, pss_bytes
from flows.runtime.embedded import LocalNatsServer
from support.prefect_server import FINAL_STATES, PrefectServer, PrefectWorker, api, prefect, run_deployment
from support.processes import command_line, process_tree

TASK = "Benchmark task"
ROLES = ["DEV", "QA", "ARCHITECT"]
CALL_SECONDS = 1.0  # server time of one call, as bench/run.py's default
SAMPLE_SECONDS = 0.2
STATE_POLLS_EVERY = 5  # samples per look at the flow run's state: the API is polled at 1 s
RUN_TIMEOUT = 600.0

# What a process of a run's tree is, from the start of its command line (the program, or
# the interpreter and its script): further on, the raylet's names default_worker.py and
# agent.py, the commands it starts. The first marker found wins: Ray's agents are renamed
# ray:: like its workers.
PROCESS_KINDS = (
    ("ray::CallHost", "call hosts (ray::CallHost)"),
    ("ray::DashboardAgent", "dashboard agent"),
    ("dashboard/agent.py", "dashboard agent"),  # before it renames itself
    ("ray::RuntimeEnvAgent", "runtime env agent"),
    ("runtime_env/agent/main.py", "runtime env agent"),
    ("ray::", "other ray:: workers"),
    ("default_worker.py", "ray workers, not yet named"),
    ("gcs_server", "gcs_server"),
    ("/raylet", "raylet"),
    ("ray-dashboard-", "dashboard modules"),
    ("dashboard/dashboard.py", "dashboard head"),
    ("log_monitor.py", "log monitor"),
    ("autoscaler/_private/monitor.py", "autoscaler monitor (monitor.py)"),
)
# The kinds a local Ray of init_ray leaves out, shown even when no run has them. The
# dashboard's head stays: Ray runs it, minimal, even with include_dashboard=False.
ABSENT_BY_DESIGN = ("dashboard modules", "log monitor", "autoscaler monitor (monitor.py)")


# The tree's root, one row for both: a deployment's is the worker's `python -m prefect.engine`.
RUN_PROCESS = "the run's process (engine / CLI)"


def kind_of_process(cmdline: str) -> str:
    words = cmdline.split()[:3]  # `python -u script.py` at most
    start = " ".join(words)
    for marker, kind in PROCESS_KINDS:
        if marker in start:
            return kind
    return "other: " + " ".join([Path(words[0]).name, *words[1:]]) if words else "other"


@dataclass
class TreePeak:
    """The highest PSS sum a process tree reached over its samples, and what it held then:
    by kind, (processes, PSS bytes)."""

    pss: int = 0
    kinds: dict[str, tuple[int, int]] = field(default_factory=dict)

    def sample(self, root: int) -> None:
        kinds: dict[str, tuple[int, int]] = {}
        for pid in process_tree(root):
            cmdline = command_line(pid)
            if cmdline is None:
                continue  # exited meanwhile
            kind = RUN_PROCESS if pid == root else kind_of_process(cmdline)
            count, pss = kinds.get(kind, (0, 0))
            kinds[kind] = (count + 1, pss + pss_bytes(pid))
        total = sum(pss for _, pss in kinds.values())
        if total > self.pss:
            self.pss, self.kinds = total, kinds


@dataclass(frozen=True)
class RunFigures:
    """One run's figures, in seconds from its start (the create call, or the CLI's launch)."""

    to_running: float
    to_first_request: float  # to the model server's first request
    to_result: float  # to the flow run's final state
    to_exit: float  # to its process's exit
    peak: TreePeak

    @property
    def running_to_result(self) -> float:
        return self.to_result - self.to_running

    @property
    def running_to_first_request(self) -> float:
        return self.to_first_request - self.to_running


def request_parameters() -> dict[str, Any]:
    return {"task": TASK, "roles": ROLES, "rounds": 0}


def flow_run_process(worker: int, flow_run_id: str) -> int | None:
    """The worker's descendant that runs `flow_run_id`, nearest the worker: the worker
    hands the id down in the environment, which the flow run's own children (Ray) inherit."""
    tree = process_tree(worker)
    marker = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    running = {pid for pid in tree.keys() - {worker} if marker in _environment(pid)}
    return next((pid for pid in running if int(tree[pid][1]) not in running), None)


def _environment(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []  # exited meanwhile


def _seconds_since(started: float, timestamp: str) -> float:
    """From a time.time() to a time the API reports (same machine, same clock)."""
    return datetime.fromisoformat(timestamp).timestamp() - started


def _figures(
    env: dict[str, str],
    emulator: EmulatorProcess,
    flow_run_id: str,
    started: float,
    exited: float,
    peak: TreePeak,
) -> RunFigures:
    """A concluded run's figures: its flow run's times by the API's timestamps, its first
    model call by the emulator's."""
    flow_run = api(env, "GET", f"/flow_runs/{flow_run_id}")
    state = flow_run["state"]
    if state["type"] != "COMPLETED":
        raise RuntimeError(f"flow run {flow_run_id} ended {state['type']}: {state.get('message')}")
    first_request = min(r["arrived"] for r in emulator.stats()["requests"])
    return RunFigures(
        to_running=_seconds_since(started, flow_run["start_time"]),
        to_first_request=first_request - started,
        to_result=_seconds_since(started, state["timestamp"]),
        to_exit=exited - started,
        peak=peak,
    )


def deployment_run(
    env: dict[str, str], emulator: EmulatorProcess, deployment_id: str, worker: int
) -> RunFigures:
    """A run of deliberate/on-demand created through the API, as the UI or a client does,
    and run by the worker; its tree is the worker's child for it and that child's own."""
    emulator.reset()
    created = time.time()
    flow_run = run_deployment(env, deployment_id, {"request": request_parameters()})
    peak, root, concluded = TreePeak(), None, False
    give_up = time.monotonic() + RUN_TIMEOUT
    try:
        for sample in itertools.count():
            if time.monotonic() > give_up:
                raise TimeoutError(f"flow run {flow_run['id']} did not finish within {RUN_TIMEOUT:.0f} s")
            root = root or flow_run_process(worker, flow_run["id"])
            if root is not None:
                if command_line(root) is None:
                    break
                peak.sample(root)
            if not concluded and sample % STATE_POLLS_EVERY == 0:
                state = api(env, "GET", f"/flow_runs/{flow_run['id']}")["state"]
                concluded = bool(state) and state["type"] in FINAL_STATES
                # Concluded before its process was ever seen: a run this loop cannot measure.
                if concluded and root is None:
                    raise RuntimeError(f"flow run {flow_run['id']} ended before its process was found")
            time.sleep(SAMPLE_SECONDS)
    finally:
        # Left running (a timeout, Ctrl-C), the flow run would outlive the worker stopped
        # next; SIGTERM is how the worker itself cancels one.
        if root is not None and command_line(root) is not None:
            os.kill(root, signal.SIGTERM)
    exited = time.time()
    return _figures(env, emulator, flow_run["id"], created, exited, peak)


def cli_run(env: dict[str, str], emulator: EmulatorProcess) -> RunFigures:
    """`python -m flows.deliberate` on the same request, its flow run on the same server
    (PREFECT_API_URL), NATS and model server."""
    roles = ",".join(ROLES)
    emulator.reset()
    peak = TreePeak()
    with tempfile.TemporaryFile() as stderr:
        launched = time.time()
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.deliberate", TASK, "--roles", roles, "--rounds", "0", "--json"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            while process.poll() is None:
                peak.sample(process.pid)
                time.sleep(SAMPLE_SECONDS)
                if time.time() - launched > RUN_TIMEOUT:
                    raise TimeoutError(f"the CLI run did not finish within {RUN_TIMEOUT:.0f} s")
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait(30)
        exited = time.time()
        if process.returncode != 0:
            stderr.seek(0)
            raise RuntimeError(f"the CLI run exited {process.returncode}: {stderr.read().decode()[-2000:]}")
    # Its flow run: the newest one of no deployment.
    (flow_run,) = api(
        env,
        "POST",
        "/flow_runs/filter",
        {"flow_runs": {"deployment_id": {"is_null_": True}}, "sort": "START_TIME_DESC", "limit": 1},
    )
    return _figures(env, emulator, flow_run["id"], launched, exited, peak)


def cell(values: Sequence[float]) -> str:
    """One value as is; several as median (min–max)."""
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.median(values):.3g} ({min(values):.3g}–{max(values):.3g})"


def print_side_by_side(deployment: list[RunFigures], cli: list[RunFigures], call_seconds: float) -> None:
    sides = (deployment, cli)
    mib = 2**20
    rows = [["figure", "deployment run", "CLI run", "unit", "note"]]

    def figure(name: str, values: Callable[[RunFigures], float], unit: str, note: str = "") -> None:
        rows.append([name, *(cell([values(run) for run in side]) for side in sides), unit, note])

    figure("to Running", lambda r: r.to_running, "s", "from create_flow_run / the CLI's launch")
    figure("to the first model request", lambda r: r.to_first_request, "s", "at the model server")
    figure("to result (Completed)", lambda r: r.to_result, "s", "the flow run's final state")
    figure("to exit", lambda r: r.to_exit, "s", "its process gone (Ray shut down)")
    figure("Running to Completed", lambda r: r.running_to_result, "s", "the flow run itself")
    figure(
        "  of which to the first request", lambda r: r.running_to_first_request, "s", "Ray and call hosts up"
    )
    figure("peak memory, PSS", lambda r: r.peak.pss / mib, "MiB", "the run's process tree")
    figure("processes at the peak", lambda r: sum(c for c, _ in r.peak.kinds.values()), "processes")
    seen = {kind for side in sides for run in side for kind in run.peak.kinds}
    for kind in sorted(seen | set(ABSENT_BY_DESIGN)):
        counts = [cell([run.peak.kinds.get(kind, (0, 0))[0] for run in side]) for side in sides]
        pss = [cell([run.peak.kinds.get(kind, (0, 0))[1] / mib for run in side]) for side in sides]
        cells = [
            f"{count} ({size} MiB)" if count != "0" else "0" for count, size in zip(counts, pss, strict=True)
        ]
        rows.append([f"  {kind}", *cells, "processes (PSS)", ""])
    repeats = len(deployment)
    print(
        f"# deployment run vs CLI run: {os.cpu_count()} cores, Python {sys.version.split()[0]}; "
        f"{len(ROLES)} agents ({', '.join(ROLES)}), 0 rounds, calls of {call_seconds:g} s; "
        f"{repeats} repeat(s)" + (", median (min–max)" if repeats > 1 else "")
    )
    print_rows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.deployment_run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    deployment: list[RunFigures] = []
    cli: list[RunFigures] = []
    with ExitStack() as stack:
        emulator = EmulatorProcess(
            max_num_seqs=256,
            ttft=TTFT,
            per_token=(CALL_SECONDS - TTFT) / OUTPUT_TOKENS,
            output_tokens=OUTPUT_TOKENS,
        )
        stack.callback(emulator.stop)
        nats = stack.enter_context(LocalNatsServer())
        # One environment for the worker (so its flow runs) and the CLI: both local Ray,
        # the same servers, this checkout's code.
        os.environ.pop("RAY_ADDRESS", None)
        env = {
            "PREFECT_HOME": stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-prefect-")),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "VLLM_URL": emulator.url,
            "NATS_URL": nats.url,
            "DELIBERATION_STATE_DIR": stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-state-")),
            "PYTHONPATH": str(ROOT),
        }
        server = stack.enter_context(PrefectServer(startup_timeout=120, env=env))
        env["PREFECT_API_URL"] = server.api_url
        prefect(env, "work-pool", "create", "deliberation", "--type", "process")
        prefect(env, "--no-prompt", "deploy", "--all")
        deployment_id = api(env, "GET", "/deployments/name/deliberate/on-demand")["id"]
        # The worker asks for runs every 10 s by default: a wait of its own choosing,
        # added to "to Running" and not the runner's; at 1 s it is small beside the rest.
        worker = stack.enter_context(
            PrefectWorker(startup_timeout=30, env=env | {"PREFECT_WORKER_QUERY_SECONDS": "1"})
        )
        worker_pid = worker.pid
        if worker_pid is None:
            raise RuntimeError("the worker did not start")
        cli_env = {**os.environ, **env}
        for repeat in range(args.repeats):
            # Alternated, so neither side always runs first (on a cache the other warmed).
            runs = [
                lambda: deployment.append(deployment_run(env, emulator, deployment_id, worker_pid)),
                lambda: cli.append(cli_run(cli_env, emulator)),
            ]
            for run in runs if repeat % 2 == 0 else reversed(runs):
                run()
    print_side_by_side(deployment, cli, CALL_SECONDS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where a warm deliberation's time and CPU go, agent by agent (BENCHMARKS.md, findings 3-4).

    .venv/bin/python -m bench.timeline [--deliberations 3] [--no-llm-limit] [--prefect-app]

For each agent task run of each 5-agent deliberation, it shows how long the task run waited
from Pending to Running, from Running to its request reaching the server, and the server's
time. These come from the task run's state history in the Prefect API and the emulator's
arrival times. It also shows the CPU seconds each kind of process spent (read from /proc,
Linux only).
"""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Any

from bench.run import EmulatorProcess, cpu_since, cpu_snapshot, warm_pipeline
from flows.runtime import prefect_api, temporary_api


def agent_rows(
    flow_run_id: Any, requests: dict[str, dict[str, Any]]
) -> list[tuple[str, float, float, float]]:
    """(task run, Pending->Running, Running->request arrived, server time) per model call."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    rows = []
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        for task_run in sorted(task_runs, key=lambda t: t.created or 0):
            # Proposals are named <agent id>.proposal and sent as the bare agent id; other
            # stages are named after the call id they send.
            user = task_run.name.removesuffix(".proposal")
            request = requests.get(user)
            if request is None:
                continue
            states: dict[str, float] = {}
            for state in client.read_task_run_states(task_run.id):  # oldest first: first attempt
                states.setdefault(state.type.value, state.timestamp.timestamp())
            if "PENDING" not in states or "RUNNING" not in states:
                continue
            rows.append(
                (
                    task_run.name,
                    states["RUNNING"] - states["PENDING"],
                    request["arrived"] - states["RUNNING"],
                    request["finished"] - request["arrived"],
                )
            )
    return rows


class PrefectsOwnApp(temporary_api.TemporaryPrefectAPI):
    """The temporary API as Prefect itself runs one (SubprocessASGIServer's factory and
    flags): every 503 goes to Prefect's client and its 2 s backoff."""

    def __init__(self, startup_timeout: float = temporary_api.STARTUP_SECONDS) -> None:
        super().__init__(startup_timeout)
        self.env = {**(self.env or {}), "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}

    def command(self) -> list[str]:
        ours = f"{temporary_api.__name__}:create_app"
        return [("prefect.server.api.server:create_app" if arg == ours else arg) for arg in super().command()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.timeline", description=__doc__.splitlines()[0])
    parser.add_argument("--deliberations", type=int, default=3)
    parser.add_argument(
        "--no-llm-limit", action="store_true", help="without the global concurrency limit on LLM calls"
    )
    parser.add_argument(
        "--prefect-app",
        action="store_true",
        help="serve Prefect's own app, without the retry of 503s (the 'before' of finding 4)",
    )
    args = parser.parse_args(argv)
    if args.prefect_app:
        prefect_api.TemporaryPrefectAPI = PrefectsOwnApp  # type: ignore[misc]
    emulator = EmulatorProcess(max_num_seqs=256, ttft=0.2, per_token=0.008, output_tokens=100)
    try:
        with warm_pipeline(emulator.url) as run:
            if args.no_llm_limit:
                os.environ["DELIBERATION_LLM_CONCURRENCY_LIMIT"] = ""
            run(1)  # warm-up: Ray workers and the API's first queries
            waits: dict[str, list[float]] = {"pending": [], "to request": []}
            for number in range(1, args.deliberations + 1):
                emulator.reset()
                before = cpu_snapshot()
                wall, result = run(1)
                spent = cpu_since(before)
                requests = {r["user"]: r for r in emulator.stats()["requests"] if r["user"]}
                if isinstance(result, BaseException):
                    print(f"\n# deliberation {number}: failed after {wall:.2f} s: {result!r}")
                    continue
                stages = ", ".join(f"{k} {v / 1000:.2f} s" for k, v in result.usage.stage_ms.items() if v)
                print(f"\n# deliberation {number}: wall {wall:.2f} s; {stages}")
                print(
                    "  CPU s: "
                    + ", ".join(f"{kind} {seconds:.2f}" for kind, seconds in sorted(spent.items()))
                )
                print(f"  {'task run':44} {'pending':>8} {'to request':>11} {'server':>7}")
                for name, pending, to_request, server in agent_rows(_latest_flow_run_id(), requests):
                    print(f"  {name[:44]:44} {pending:8.2f} {to_request:11.2f} {server:7.2f}")
                    waits["pending"].append(pending)
                    waits["to request"].append(to_request)
            print()
            for what, values in waits.items():
                print(f"{what}: median {statistics.median(values):.2f} s, max {max(values):.2f} s")
    finally:
        emulator.stop()
    return 0


def _latest_flow_run_id() -> Any:
    """The deliberation just run: the newest flow run (they run one at a time here)."""
    from prefect import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)[0].id


if __name__ == "__main__":
    raise SystemExit(main())

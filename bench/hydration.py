"""What a call host pays to take on a flow run: the CPU of hydrating the run's serialized
Prefect context (settings, clients, the flow run context) and of releasing it, measured in
this process, for several flow runs in a row as a host sees them.

    .venv/bin/python -m bench.hydration [--runs 8]

The host's code is the one Ray runs (flows.runtime.hosts.CallHost), called on an event loop of
its own, without Ray, against a temporary Prefect API; no model server is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
from typing import Any


def measure(runs: int) -> tuple[float, list[float], list[float]]:
    """CPU ms of serializing the context in the flow, and of each hydration and release."""
    from prefect import flow
    from prefect.context import serialize_context

    from flows.hosting import MODEL_CALLS
    from flows.runtime.hosts import CallHost

    @flow(name="bench-hydration")
    def one_flow_run() -> tuple[float, list[float], list[float]]:
        started = time.thread_time()
        serialized = serialize_context()
        serializing = (time.thread_time() - started) * 1000
        hydrating: list[float] = []
        releasing: list[float] = []

        async def host_side() -> None:
            host = CallHost(max_calls=1, hooks=MODEL_CALLS)
            ref: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            ref.set_result(serialized)  # what the host awaits instead of the Ray object
            for run in range(runs):
                started = time.thread_time()
                await host.prepare(f"run-{run}", [ref])
                hydrated = time.thread_time()
                await host.release(f"run-{run}")
                hydrating.append((hydrated - started) * 1000)
                releasing.append((time.thread_time() - hydrated) * 1000)

        # A thread of its own, as on a host: the flow's loop and context stay out of it.
        thread = threading.Thread(target=asyncio.run, args=(host_side(),))
        thread.start()
        thread.join()
        return serializing, hydrating, releasing

    return one_flow_run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hydration", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8, help="flow runs a host takes on in a row")
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from flows.runtime.prefect_api import prefect_api

    with prefect_api():
        serializing, hydrating, releasing = measure(args.runs)
    later = hydrating[1:] or hydrating
    rows = [
        ("flow: serialize_context", serializing, "once per flow run"),
        ("host: hydrate, first flow run", hydrating[0], ""),
        ("host: hydrate, later flow runs", statistics.median(later), f"median of {len(later)}"),
        ("host: release, median", statistics.median(releasing), ""),
    ]
    for name, value, note in rows:
        print(f"{name:<34}  {value:6.1f} ms CPU  {note}".rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The benchmark: orchestration overhead, parallel efficiency and throughput against the
latency-emulating server (bench/emulator.py), side by side with a plain asyncio.gather
baseline, in one run. Prints a table; see BENCHMARKS.md for figures and how to read them.

    .venv/bin/python -m bench.run            # the full run (several minutes)
    .venv/bin/python -m bench.run --quick    # every figure once, small (what CI runs)
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agents.roles import Role
from flows.runtime.embedded import free_port
from support.processes import command_line, process_tree

ROLES = list(Role)

ROOT = Path(__file__).resolve().parents[1]
TTFT = 0.2  # the emulator's time to the first token, s
OUTPUT_TOKENS = 100


@dataclass(frozen=True)
class Figure:
    name: str
    values: list[float]
    unit: str
    note: str = ""

    def row(self) -> list[str]:
        if not self.values:
            return [self.name, "–", "–", "–", self.unit, self.note]
        low, mid, high = min(self.values), statistics.median(self.values), max(self.values)
        return [self.name, f"{low:.3g}", f"{mid:.3g}", f"{high:.3g}", self.unit, self.note]


def print_table(figures: Sequence[Figure], cores: int) -> None:
    header = ["figure", "min", "median", "max", "unit", "note"]
    print(f"# deliberation benchmark: {cores} cores, Python {sys.version.split()[0]}")
    print_rows([header, *(f.row() for f in figures)])


def print_rows(rows: Sequence[Sequence[str]]) -> None:
    """Rows of cells (the first the header) in left-aligned columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


# -- the emulated model server ---------------------------------------------------------
class EmulatorProcess:
    def __init__(self, max_num_seqs: int, ttft: float, per_token: float, output_tokens: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["--port", str(self.port), "--max-num-seqs", str(max_num_seqs), "--ttft", str(ttft)]
        args += ["--per-token", str(per_token), "--output-tokens", str(output_tokens)]
        self.single_call = ttft + per_token * output_tokens
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.emulator", *args], cwd=ROOT, stdout=subprocess.DEVNULL
        )
        give_up = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self.url}/health", timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                if time.monotonic() > give_up or self._process.poll() is not None:
                    raise RuntimeError("the emulator did not start") from None
                time.sleep(0.1)

    def reset(self) -> None:
        httpx.post(f"{self.url}/stats/reset", timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/stats", timeout=30).json())

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(10)


def proposal_requests(stats: dict[str, Any]) -> list[dict[str, Any]]:
    # Proposal calls carry the bare agent id as `user`; review-stage calls a dotted call id.
    return [r for r in stats["requests"] if r["user"] and "." not in r["user"]]


def _critical_path(stats: dict[str, Any]) -> float:
    """The sum over stages of the slowest call's server time (arrival to last token)."""
    slowest: dict[str, float] = {}
    for r in stats["requests"]:
        stage = r["user"].split(".")[1] if "." in (r["user"] or "") else "proposal"
        slowest[stage] = max(slowest.get(stage, 0.0), r["finished"] - r["arrived"])
    return sum(slowest.values())


# -- processes, from /proc (support/processes.py) ------------------------------------------
TICKS = os.sysconf("SC_CLK_TCK")


def process_kind(cmdline: str) -> str | None:
    """What an orchestration process is, from its command line; None for anything else
    (the model server, nats-server, other programs on the machine)."""
    if cmdline.startswith("ray::"):  # Ray renames its worker and actor processes
        return "ray workers"
    if "prefect.server" in cmdline or "flows.runtime.temporary_api" in cmdline:
        return "prefect api"
    # The dashboard's head runs (minimal) even with include_dashboard=False.
    if "raylet" in cmdline or "gcs_server" in cmdline or "ray/dashboard/dashboard.py" in cmdline:
        return "ray system"
    return None


CpuSnapshot = dict[int, tuple[str, float]]
# The kind of each process of this process's tree worth counting, by PID, from the tree's
# stat fields (as support/processes.py's `process_tree` gives them); a PID left out is not counted.
KindsOfTree = Callable[[dict[int, list[str]]], dict[int, str]]


def orchestration_kinds(tree: dict[int, list[str]]) -> dict[int, str]:
    """This process (the flow's) and the orchestration processes under it (`process_kind`)."""
    kinds = {}
    for pid in tree:
        cmdline = command_line(pid)
        if cmdline is None:
            continue  # exited meanwhile
        kind = "flow (this process)" if pid == os.getpid() else process_kind(cmdline)
        if kind:
            kinds[pid] = kind
    return kinds


def cpu_snapshot(kinds_of: KindsOfTree = orchestration_kinds) -> CpuSnapshot:
    """CPU seconds so far of each process `kinds_of` names, by PID, with its kind: this
    process and its descendants only. Ray's daemons, its workers and the temporary API
    all descend from it; on a shared machine (or beside another pytest-xdist worker) other
    runs' Ray and Prefect processes are not ours."""
    tree = process_tree(os.getpid())
    return {
        pid: (kind, (int(tree[pid][11]) + int(tree[pid][12])) / TICKS)  # utime + stime
        for pid, kind in kinds_of(tree).items()
    }


def cpu_since(before: CpuSnapshot, kinds_of: KindsOfTree = orchestration_kinds) -> dict[str, float]:
    """CPU seconds spent since `before`, by kind of process. Counted per process, so one that
    exits meanwhile takes nothing away: what it spent since `before` is lost, not subtracted."""
    spent: dict[str, float] = {}
    for pid, (kind, seconds) in cpu_snapshot(kinds_of).items():
        spent[kind] = spent.get(kind, 0.0) + seconds - before.get(pid, (kind, 0.0))[1]
    return spent


def tree_memory_bytes(root: int) -> tuple[int, int]:
    """(RSS, PSS) summed over `root` and its descendants. RSS counts a page shared by
    several processes (a library every Ray process maps) once per process; PSS divides it
    among them, so the PSS sum is what the tree holds."""
    tree = process_tree(root)
    rss = sum(int(fields[21]) for fields in tree.values()) * os.sysconf("SC_PAGE_SIZE")
    return rss, sum(pss_bytes(pid) for pid in tree)


def pss_bytes(pid: int) -> int:
    """The process's proportional share of the memory it maps; 0 once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass  # exited meanwhile
    return 0


# -- figures ---------------------------------------------------------------------------------
def cold_start(emulator: EmulatorProcess, repeats: int, agents: int = 5) -> list[Figure]:
    """`python -m flows.deliberate` as a user runs it: embedded NATS, temporary Prefect API,
    local Ray; the model server is the emulator. `agents`: 5 roles x agents // 5."""
    to_first, to_result, peak, peak_pss = [], [], [], []
    env = {k: v for k, v in os.environ.items() if k not in {"NATS_URL", "PREFECT_API_URL", "RAY_ADDRESS"}}
    env |= {"VLLM_URL": emulator.url, "DELIBERATION_STATE_DIR": tempfile.mkdtemp(prefix="bench-state-")}
    for _ in range(repeats):
        emulator.reset()
        launched = time.time()
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.deliberate", "Benchmark task", "--rounds", "0", "--json"]
            + ["--agents-per-role", str(agents // 5)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        highest = highest_pss = 0
        while process.poll() is None:
            rss, pss = tree_memory_bytes(process.pid)
            highest, highest_pss = max(highest, rss), max(highest_pss, pss)
            time.sleep(0.2)
        finished = time.time()
        if process.returncode != 0:
            raise RuntimeError(f"the cold-start run exited {process.returncode}")
        arrivals = [r["arrived"] for r in emulator.stats()["requests"]]
        to_first.append(min(arrivals) - launched)
        to_result.append(finished - launched)
        peak.append(highest / 2**20)
        peak_pss.append(highest_pss / 2**20)
    size = "" if agents == 5 else f" ({agents} agents)"
    return [
        Figure(
            f"cold start{size}: launch to first LLM request",
            to_first,
            "s",
            f"{agents} agents, local defaults",
        ),
        Figure(f"cold start{size}: launch to result (exit)", to_result, "s", "incl. ranking stage, shutdown"),
        Figure(f"peak memory of the local run{size}", peak, "MiB", "RSS of the CLI's process tree"),
        Figure(f"peak memory of the local run{size}, PSS", peak_pss, "MiB", "shared pages counted once"),
    ]


@contextmanager
def warm_pipeline(model_url: str) -> Iterator[Callable[..., Any]]:
    """One Prefect API, one Ray, one nats-server for many deliberations, as a worker has, on
    the model server at `model_url`."""
    import ray

    from flows.runtime.embedded import LocalNatsServer
    from flows.runtime.prefect_api import prefect_api
    from flows.runtime.ray_setup import init_ray

    # The pipeline's own defaults otherwise (calls in flight, call hosts).
    os.environ.update({"VLLM_URL": model_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    with LocalNatsServer() as nats, prefect_api():
        os.environ["NATS_URL"] = nats.url
        init_ray(None)
        try:
            from agents.models import DeliberationRequest
            from flows.deliberate import deliberate

            def run(agents_per_role: int, roles: list[Role] = ROLES, rounds: int = 0) -> tuple[float, Any]:
                request = DeliberationRequest(
                    task="Benchmark task",
                    roles=roles,
                    agents_per_role=agents_per_role,
                    rounds=rounds,
                    deadline_seconds=600,
                    deliberation_id=uuid.uuid4().hex,
                )
                started = time.monotonic()
                state = deliberate(request=request, return_state=True)
                wall = time.monotonic() - started
                return wall, state.result(raise_on_failure=False)

            yield run
        finally:
            ray.shutdown()


def baseline(emulator: EmulatorProcess, agents: int) -> tuple[float, float]:
    """The same proposal calls with plain asyncio.gather and httpx, no orchestration: the
    wall time (s) and this process's CPU per call (ms)."""
    from agents.models import DeliberationRequest
    from agents.planning import plan_council
    from agents.prompts import proposal_messages

    request = DeliberationRequest(task="Benchmark task", roles=ROLES, agents_per_role=max(1, agents // 5))

    async def calls() -> None:
        async with httpx.AsyncClient(base_url=emulator.url, timeout=600) as client:
            await asyncio.gather(
                *(
                    client.post(
                        "/v1/chat/completions",
                        json={"model": "m", "messages": proposal_messages(request, a), "max_tokens": 512},
                    )
                    for a in plan_council(request)
                )
            )

    started, cpu = time.monotonic(), time.process_time()
    asyncio.run(calls())
    return time.monotonic() - started, (time.process_time() - cpu) * 1000 / agents


IDLE_SECONDS = 10.0


def idle_figure(seconds: float) -> Figure:
    """CPU the orchestration processes spend while no deliberation runs (Ray's daemons and
    actors, the API's services), which every deliberation pays for as long as it lasts."""
    before = cpu_snapshot()
    time.sleep(seconds)
    spent = sum(cpu_since(before).values())
    return Figure(
        "orchestration CPU while idle", [spent / seconds * 1000], "ms/s", f"over {seconds:g} s, warm"
    )


def cpu_split(samples: Sequence[tuple[int, float]]) -> tuple[float, float] | None:
    """(fixed per deliberation, per model call) from (model calls, CPU) of deliberations of
    different sizes: the least-squares line through them. None if every size is the same.
    A flow run costs something whatever its size (its states, logs, artifacts, the hosts'
    copy of its context); a figure per call that divides it by few calls hides that."""
    if len({calls for calls, _ in samples}) < 2:
        return None
    mean_calls = statistics.fmean(calls for calls, _ in samples)
    mean_cpu = statistics.fmean(cpu for _, cpu in samples)
    slope = sum((calls - mean_calls) * (cpu - mean_cpu) for calls, cpu in samples) / sum(
        (calls - mean_calls) ** 2 for calls, _ in samples
    )
    return mean_cpu - slope * mean_calls, slope


def warm_figures(
    emulator: EmulatorProcess, run: Callable[..., Any], sizes: list[int], repeats: int, rounds: int = 0
) -> list[Figure]:
    figures = [idle_figure(IDLE_SECONDS)]
    totals: list[tuple[int, float]] = []  # (model calls, CPU ms) per deliberation
    stages = "proposals, " + (f"{rounds} review round(s), " if rounds else "") + "ranking"
    for agents in sizes:
        samples: dict[str, list[float]] = {}
        for _ in range(repeats):
            emulator.reset()
            cpu_before = cpu_snapshot()
            wall, result = run(agents // 5, rounds=rounds)
            cpu_by_kind = cpu_since(cpu_before)
            cpu = sum(cpu_by_kind.values())
            stats = emulator.stats()
            totals.append((len(stats["requests"]), cpu * 1000))
            proposals = proposal_requests(stats)
            slowest = max(r["finished"] - r["arrived"] for r in proposals)
            stage = result.usage.stage_ms["proposal"] / 1000
            gathered, plain_cpu = baseline(emulator, agents)
            measured = {
                "wall": wall,
                "overhead": wall - _critical_path(stats),
                "critical path ratio": wall / _critical_path(stats),
                "proposal overhead": stage - slowest,
                "in flight": stats["max_running"],
                "efficiency": stage / emulator.single_call,
                "cpu per call": cpu / len(stats["requests"]) * 1000,
                **{
                    f"cpu per call: {kind}": spent / len(stats["requests"]) * 1000
                    for kind, spent in cpu_by_kind.items()
                },
                "gathered": gathered,
                "ratio": stage / gathered,
                "cpu ratio": cpu / len(stats["requests"]) * 1000 / plain_cpu,
            }
            for name, value in measured.items():
                samples.setdefault(name, []).append(value)
        figures += [
            Figure(f"{agents} agents: deliberation wall time", samples["wall"], "s", f"{stages}, warm"),
            Figure(
                f"{agents} agents: wall / critical path",
                samples["critical path ratio"],
                "x",
                "critical path: each stage's slowest call",
            ),
            Figure(
                f"{agents} agents: overhead (wall - critical path)",
                samples["overhead"],
                "s",
                "server time excluded",
            ),
            Figure(
                f"{agents} agents: proposal stage overhead",
                samples["proposal overhead"],
                "s",
                "stage - slowest call",
            ),
            Figure(
                f"{agents} agents: max in flight at the server",
                samples["in flight"],
                "calls",
                f"of {agents}" if not rounds else "any stage (critiques: 2 per proposal)",
            ),
            Figure(f"{agents} agents: proposal stage / single call", samples["efficiency"], "x", "limit 1.0"),
            Figure(
                f"{agents} agents: orchestration CPU per model call",
                samples["cpu per call"],
                "ms",
                "flow + Ray + Prefect API, all stages",
            ),
            *(
                Figure(f"{agents} agents:   of which {name.split(': ')[1]}", values, "ms", "per model call")
                for name, values in samples.items()
                if name.startswith("cpu per call: ")
            ),
            Figure(
                f"{agents} agents: asyncio.gather baseline",
                samples["gathered"],
                "s",
                "same calls, no orchestration",
            ),
            Figure(
                f"{agents} agents: proposal stage / asyncio.gather", samples["ratio"], "x", "baseline ratio"
            ),
            Figure(
                f"{agents} agents: CPU per call / asyncio.gather's",
                samples["cpu ratio"],
                "x",
                "the drift guard: same run, same calls",
            ),
        ]
    split = cpu_split(totals)
    if split is not None:
        sizes_note = "/".join(str(size) for size in sizes) + " agents"
        figures += [
            Figure("orchestration CPU per deliberation, fixed", [split[0]], "ms", f"fit over {sizes_note}"),
            Figure("orchestration CPU per model call, marginal", [split[1]], "ms", "the fit's slope"),
        ]
    return figures


def throughput(emulator: EmulatorProcess, run: Callable[..., Any], deliberations: int) -> list[Figure]:
    emulator.reset()
    results: list[Any] = []
    started = time.monotonic()
    # Each thread runs in a copy of this context, which holds the Prefect API's settings.
    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(lambda: results.append(run(1)),))
        for _ in range(deliberations)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    stats = emulator.stats()
    completed = sum(1 for _, r in results if getattr(r, "status", None) == "completed")
    for _, result in results:
        if getattr(result, "status", None) != "completed":
            # What a figure cannot say: why a deliberation did not complete.
            print(f"throughput: not completed: {_why(result)}", file=sys.stderr)
    note = f"{deliberations} x 5 agents at once; {completed} completed"
    return [
        Figure("throughput: deliberations per minute", [completed / wall * 60], "/min", note),
        Figure(
            "throughput: max requests running at the server",
            [stats["max_running"]],
            "calls",
            f"max_num_seqs {stats['max_num_seqs']}",
        ),
        Figure("throughput: max requests waiting at the server", [stats["max_waiting"]], "calls", ""),
    ]


def _why(result: Any) -> str:
    if isinstance(result, BaseException):
        return f"{type(result).__name__}: {result}"
    failed = [o for o in result.outcomes if o.status != "completed"]
    reasons = [f"{o.agent_id} {o.status}: {o.error.message if o.error else ''}" for o in failed[:5]]
    return f"{result.status}; " + "; ".join(reasons)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value `fraction` of the way up the sorted values (nearest rank, no interpolation)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def nats_figures(count: int) -> list[Figure]:
    from agents.adapters.nats import EventBus
    from agents.events import agent_event
    from agents.models import AgentOutcome, AgentStatus, ErrorInfo
    from agents.settings import bus_config_for
    from flows.runtime.embedded import LocalNatsServer

    outcome = AgentOutcome(
        agent_id="agent-dev-001",
        role=Role.DEV,
        status=AgentStatus.FAILED,
        attempts=1,
        duration_ms=1,
        error=ErrorInfo(type="X", message="benchmark", retryable=False),
    )
    latencies = []
    with LocalNatsServer() as nats, EventBus.connect(bus_config_for(nats.url)) as bus:
        started = time.monotonic()
        for _ in range(count):
            event = agent_event(uuid.uuid4().hex, "bench", outcome)
            sent = time.monotonic()
            bus.publish(event)
            latencies.append((time.monotonic() - sent) * 1000)
        rate = count / (time.monotonic() - started)
    p99 = percentile(latencies, 0.99)
    return [
        Figure(
            "NATS publish with ack: p50",
            [statistics.median(latencies)],
            "ms",
            f"{count} events, one at a time",
        ),
        Figure("NATS publish with ack: p99", [p99], "ms", "file storage"),
        Figure("NATS events per second", [rate], "/s", "sequential, acked"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every figure once, small, no warm-up")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default=None, help="council sizes of the warm figures, e.g. 5,50")
    parser.add_argument("--throughput", type=int, default=None, help="deliberations submitted at once")
    parser.add_argument("--no-cold-start", action="store_true", help="skip the cold-start figures")
    parser.add_argument("--cold-sizes", default="5", help="council sizes of the cold starts, e.g. 5,50")
    parser.add_argument("--rounds", type=int, default=0, help="review rounds in the warm deliberations")
    parser.add_argument(
        "--call-seconds",
        type=float,
        default=1.0,
        help="server time of one call in the cold-start and warm figures (issue 13 measured ~2.2)",
    )
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    sizes = [5] if args.quick else [5, 15, 50]
    if args.sizes:
        sizes = [int(size) for size in args.sizes.split(",")]
    concurrent = args.throughput if args.throughput is not None else 2 if args.quick else 20
    figures: list[Figure] = []
    # 1 s per call by default: long enough to tell overhead from model time, short enough
    # to repeat. Overhead is a ratio to it, so a longer call gives a smaller ratio.
    if args.call_seconds <= TTFT:
        parser.error(f"--call-seconds must be more than the time to the first token, {TTFT} s")
    per_token = (args.call_seconds - TTFT) / OUTPUT_TOKENS
    fast = EmulatorProcess(max_num_seqs=256, ttft=TTFT, per_token=per_token, output_tokens=OUTPUT_TOKENS)
    try:
        if not args.no_cold_start:
            for agents in (int(size) for size in args.cold_sizes.split(",")):
                figures += cold_start(fast, repeats, agents)
        with warm_pipeline(fast.url) as run:
            if not args.quick:
                # Warm-up: the API's first queries, and every call host the largest council uses.
                run(max(sizes) // 5)
            figures += warm_figures(fast, run, sizes, repeats, args.rounds)
            limited = EmulatorProcess(
                max_num_seqs=16, ttft=TTFT, per_token=0.008, output_tokens=OUTPUT_TOKENS
            )
            try:
                os.environ["VLLM_URL"] = limited.url
                figures += throughput(limited, run, concurrent)
            finally:
                limited.stop()
        figures += nats_figures(100 if args.quick else 2000)
    finally:
        fast.stop()
    print_table(figures, os.cpu_count() or 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

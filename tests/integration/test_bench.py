"""The benchmark's emulated server behaves like vLLM's scheduler, and the benchmark runs
(quick mode: figures are printed, never asserted against a clock)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agents.adapters import confine
from agents.errors import ConfigurationError
from bench.run import EmulatorProcess, cpu_since, cpu_snapshot, cpu_split
from bench.service_burst import dropped_events, postgres_bin_dir
from tests.conftest import print_in_summary

ROOT = Path(__file__).resolve().parents[2]


def run_module(*argv: str, timeout: float) -> str:
    """`python -m ARGV` as a user runs it, on its embedded defaults (none of the servers
    this test session set up); its standard output, once it has exited 0."""
    env = {k: v for k, v in os.environ.items() if k not in {"VLLM_URL", "NATS_URL", "PREFECT_API_URL"}}
    proc = subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_emulator_queues_beyond_max_num_seqs_and_reports_usage() -> None:
    emulator = EmulatorProcess(max_num_seqs=2, ttft=0.3, per_token=0.001, output_tokens=20)
    try:

        async def four() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=emulator.url, timeout=30) as client:
                body = {"model": "m", "messages": [{"role": "user", "content": "a b c"}], "max_tokens": 5}
                return await asyncio.gather(
                    *(client.post("/v1/chat/completions", json=body | {"user": f"u{i}"}) for i in range(4))
                )

        replies = asyncio.run(four())
        stats = emulator.stats()
    finally:
        emulator.stop()
    assert [r.json()["usage"]["completion_tokens"] for r in replies] == [5] * 4
    assert {r.json()["choices"][0]["finish_reason"] for r in replies} == {"length"}
    assert (stats["max_running"], stats["max_waiting"]) == (2, 2)
    admitted = sorted(r["admitted"] for r in stats["requests"])
    finished = sorted(r["finished"] for r in stats["requests"])
    # The last two were admitted only when the first two had finished.
    assert admitted[2] >= finished[0] and admitted[3] >= finished[1]


def test_cpu_split_separates_a_deliberations_fixed_cost_from_its_cost_per_call() -> None:
    # 400 ms per deliberation and 20 ms per call, measured at 10 and 100 calls with noise.
    samples = [(10, 590.0), (10, 610.0), (100, 2390.0), (100, 2410.0)]
    fixed, per_call = cpu_split(samples) or (0.0, 0.0)
    assert fixed == pytest.approx(400.0)
    assert per_call == pytest.approx(20.0)
    assert cpu_split([(10, 600.0), (10, 650.0)]) is None  # one size: nothing to tell apart


def test_the_events_the_prefect_servers_log_says_it_dropped_are_counted() -> None:
    # Lines as Prefect 3.9.1's server writes them: its broker's full queue and its task-run
    # recorder name one event a line, its event persister a whole batch.
    log = "\n".join([
        "08:40.436 | ERROR | event_persister - Max flush retries (5) reached, dropping 204 events",
        "08:44.412 | ERROR | task_run_recorder - Dropping event 01a2538d-a372 after 6 failed attempts",
        "08:44.413 | ERROR | task_run_recorder - Dropping event 01a2538d-a373 after 6 failed attempts",
        "08:44.414 | ERROR | task_run_recorder - Error flushing 91 events (50 to retry, 41 dropped)",
        "memory - Subscription queue is full, dropping message for topic='events'",
        "event_persister - Event queue full (50000/50000), dropping 7 events that failed to flush",
        "event_persister - Event queue full (50000/50000), dropping event id=01a2",
    ])  # fmt: skip
    # The summary line of the recorder's flush repeats the events already named: not counted.
    assert dropped_events(log) == 204 + 2 + 1 + 7 + 1
    assert dropped_events("Error flushing 100 events (100 to retry, 0 dropped)") == 0


def test_cpu_since_counts_this_process_and_takes_nothing_for_one_that_exited() -> None:
    before = cpu_snapshot() | {2**40: ("ray workers", 5.0)}  # a worker gone since: no such PID
    busy_until = time.process_time() + 0.2
    while time.process_time() < busy_until:
        pass
    spent = cpu_since(before)
    assert spent["flow (this process)"] >= 0.15
    assert all(seconds >= 0 for seconds in spent.values())


@pytest.mark.slow
def test_benchmark_runs_in_quick_mode() -> None:
    # Ray's raylet may print warnings on stdout too; the table starts at its title.
    lines = run_module("bench.run", "--quick", timeout=900).splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("# deliberation benchmark")) :]
    assert lines[0] == f"# deliberation benchmark: {os.cpu_count()} cores, Python {sys.version.split()[0]}"
    for figure in (
        "cold start: launch to first LLM request",
        "peak memory of the local run",
        "peak memory of the local run, PSS",
        "5 agents: overhead (wall - critical path)",
        "orchestration CPU while idle",
        "5 agents: orchestration CPU per model call",
        "5 agents:   of which prefect api",
        "5 agents: max in flight at the server",
        "5 agents: proposal stage / asyncio.gather",
        "throughput: deliberations per minute",
        "NATS publish with ack: p99",
    ):
        row = next(line for line in lines if line.startswith(figure))
        assert float(row[len(figure) :].split()[0]) >= 0
    # The drift guard: the pipeline's CPU per call against plain asyncio + httpx making the
    # same calls in the same run, in CI's log every day.
    for figure in ("5 agents: orchestration CPU per model call", "5 agents: CPU per call / asyncio.gather's"):
        print_in_summary(
            "bench.run --quick: " + " ".join(next(x for x in lines if x.startswith(figure)).split())
        )


@pytest.mark.slow
def test_hydration_figures_are_printed() -> None:
    printed = run_module("bench.hydration", "--runs", "2", timeout=300)
    figures = [line for line in printed.splitlines() if line.startswith(("flow:", "host:"))]
    assert [line.split("  ")[0] for line in figures] == [
        "flow: serialize_context",
        "host: hydrate, first flow run",
        "host: hydrate, later flow runs",
        "host: release, median",
    ]
    for line in figures:
        assert float(line.split("ms CPU")[0].split()[-1]) >= 0


@pytest.mark.slow
def test_winner_evaluation_runs_in_quick_mode() -> None:
    printed = run_module("bench.winners", "--quick", timeout=600)
    # Five tables, each a title, a header and its rows; a blank line between them.
    tables = printed[printed.index("# winner accuracy") :].split("\n\n")
    accuracy, tests_only, saboteur, quirk, sleeper = (table.splitlines()[2:] for table in tables)
    rows = {tuple(line.split()[:2]): line.split()[2:5] for line in accuracy}
    assert set(rows) == {(b, r) for b in ("abstaining", "informative") for r in ("no", "yes")}
    for winner, first, chance in rows.values():
        assert 0.0 <= float(winner) <= 1.0 and first == "0.67" and float(chance) > 0.0
    # Issue 25: with the correct code in every position, the tests-only member never wins.
    # Issue 24: with the tests weighed by agreement, neither a saboteur's test nor a test
    # only the buggy code passes takes the win from the correct code.
    for table in (tests_only, saboteur, quirk):
        [row] = table
        assert row.split()[:5] == ["abstaining", "yes", "1.00", "0.20", "0.20"], row
    # And a test that sleeps past the wall clock on every solution weighs nothing (one
    # task, the correct code first).
    [row] = sleeper
    assert row.split()[:5] == ["abstaining", "yes", "1.00", "1.00", "0.20"], row


@pytest.mark.slow
def test_humaneval_councils_are_played_and_the_decidable_ones_counted_apart() -> None:
    # Issue 33, on the first 4 playable problems (each council's code runs in the sandbox).
    if (unconfined := confine.isolation_problem()) is not None:
        pytest.skip(unconfined)
    printed = run_module("bench.humaneval", "--count", "4", timeout=600)
    header, *rows = printed[printed.index("setting") :].splitlines()[:6]
    assert header.split()[:4] == ["setting", "decidable", "right", "of"]
    table = {line[:32].strip(): line[32:].split() for line in rows}
    assert list(table) == [
        "oracle",
        "self-tested + partial tester",
        "docstring examples only",
        "saboteur",
        "no tests",
    ]
    # The hidden tests decide every oracle council, and what decided each is the evidence
    # (the tester's tests, or the mutant contradicting its docstring), never council order.
    decidable, right, accuracy = table["oracle"][:3]
    assert (decidable, right, accuracy) == ("4", "4", "1.00")
    decided = {name: int(n) for name, n in re.findall(r"([a-z_]+) (\d+)", " ".join(table["oracle"][7:]))}
    assert set(decided) <= {"self_contradiction", "independent_tests"}, decided
    assert sum(decided.values()) == 4, decided
    for setting, row in table.items():
        assert int(row[1]) <= int(row[0]), setting
        print_in_summary(f"bench.humaneval --count 4: {setting}: " + " ".join(row))


@pytest.mark.slow
def test_service_burst_on_postgresql_loses_and_duplicates_nothing() -> None:
    try:
        postgres_bin_dir()
    except ConfigurationError as exc:
        pytest.skip(str(exc))
    argv = ["--count", "4", "--database", "postgresql", "--concurrency", "2", "--warmup", "0"]
    lines = run_module("bench.service_burst", *argv, timeout=300).splitlines()
    lines = lines[
        next(i for i, line in enumerate(lines) if line.startswith("# deliberation service burst")) :
    ]
    # Columns: figure, postgresql, unit, note; two spaces or more between them.
    values = {cells[0]: cells[1] for cells in (re.split(r"\s{2,}", line.strip()) for line in lines[2:])}
    assert values["concluded"] == "4"
    assert values["lost"] == values["duplicated"] == values["stream disagrees with result"] == "0"
    assert values["agent events"] == "20"
    assert float(values["submit reply, all at once: p99"]) > 0 and float(values["model calls sustained"]) > 0

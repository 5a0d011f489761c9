"""Where the CPU goes: py-spy attached to running processes (and their children) while a
benchmark runs, sampling only threads that hold the GIL (`--gil`: a thread blocked on a
socket or asleep is not work), and the samples summed into the biggest items.

Each process gets two recorders: collapsed stacks (`NAME.txt`, which `top_items` reads)
and a flame graph (`NAME.svg`). Both sample without pausing the process (`--nonblocking`),
but py-spy itself takes CPU on the same machine: profile in a run of its own, never in the
run whose figures are reported.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agents.errors import ConfigurationError

RATE = 50  # samples a second per process


def py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise ConfigurationError("py-spy not found; ./dev test installs it (the dev extra)")
    return found


@contextmanager
def profiling(pids: Mapping[str, int], out_dir: Path, rate: int = RATE) -> Iterator[None]:
    """py-spy on each process of `pids` (by name) and its children, from entry to exit;
    `out_dir/NAME.txt` and `out_dir/NAME.svg` written on exit."""
    out_dir.mkdir(parents=True, exist_ok=True)
    recorders = []
    for name, pid in pids.items():
        for fmt, suffix in (("raw", "txt"), ("flamegraph", "svg")):
            command = [py_spy(), "record", "--gil", "--subprocesses", "--nonblocking"]
            command += ["--rate", str(rate), "--format", fmt, "--pid", str(pid)]
            command += ["-o", str(out_dir / f"{name}.{suffix}")]
            log = (out_dir / f"{name}.{suffix}.log").open("wb")
            recorders.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
    try:
        yield
    finally:
        for recorder in recorders:
            recorder.send_signal(signal.SIGINT)  # py-spy writes what it has, then exits
        for recorder in recorders:
            try:
                recorder.wait(timeout=60)
            except subprocess.TimeoutExpired:
                recorder.kill()


@dataclass(frozen=True)
class Profile:
    samples: int
    by_function: list[tuple[str, int]]  # the frame a sample was in, biggest first
    by_package: list[tuple[str, int]]  # the top-level package of that frame
    by_process: list[tuple[str, int]]  # the sampled process's command, shortened


def top_items(collapsed: Path, limit: int = 10) -> Profile:
    """The biggest items of a py-spy raw (collapsed stacks) file, by the frame each sample
    was in ("self" time) and by that frame's package."""
    functions: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    processes: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        python_frames = [f for f in frames if not f.startswith("process ")]
        process_frames = [f for f in frames if f.startswith("process ")]
        n = int(count)
        total += n
        leaf = python_frames[-1] if python_frames else "(no python frame)"
        functions[leaf] += n
        packages[package_of(leaf)] += n
        processes[process_name(process_frames[-1]) if process_frames else "?"] += n
    return Profile(
        total,
        functions.most_common(limit),
        packages.most_common(limit),
        processes.most_common(limit),
    )


def package_of(frame: str) -> str:
    """`encode (json/encoder.py:200)` -> `json`; a script's own file -> its name."""
    where = frame.rpartition(" (")[2].rstrip(")")
    path = where.rpartition(":")[0] or where
    head = path.split("/")[0]
    return head.removesuffix(".py") or "?"


def process_name(frame: str) -> str:
    """`process 12:"python -m flows.service"` -> what kind of process it is."""
    command = frame.partition(":")[2].strip('"')
    for marker, name in (
        ("ray::", "ray worker"),
        ("default_worker.py", "ray worker"),
        ("flows.service", "service process"),
        ("uvicorn", "prefect server"),
        ("prefect", "prefect server"),
        ("ray/", "ray system"),
    ):
        if marker in command:
            return name
    return command[:60]


def print_profile(name: str, profile: Profile, calls: int) -> None:
    """The items as ms of CPU per model call (samples / RATE s, over `calls`)."""
    per_call = 1000 / RATE / max(1, calls)
    print(f"## {name}: {profile.samples} samples, {profile.samples * per_call:.1f} ms per model call")
    for title, items in (
        ("process", profile.by_process),
        ("package", profile.by_package),
        ("function (self)", profile.by_function),
    ):
        print(f"{'by ' + title:<90} {'ms/call':>8} {'share':>6}")
        for item, n in items:
            print(f"  {item[:88]:<88} {n * per_call:8.2f} {n / max(1, profile.samples):6.1%}")

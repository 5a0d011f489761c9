"""Processes under one process, read from /proc (Linux; no psutil here). The tests use them
to see which daemons a local Ray starts; the benchmark, to measure what its orchestration
processes spend (bench/run.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def proc_stats() -> Iterator[tuple[Path, list[str]]]:
    """(/proc/PID, the fields of its stat after the command name) for every process; the
    name may hold spaces and parentheses, so the fields start after its last ')'.
    Fields are 0-based from the state: 1 ppid, 11 utime, 12 stime, 21 rss (pages)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield entry, (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # exited meanwhile


def process_tree(root: int) -> dict[int, list[str]]:
    """The stat fields (as `proc_stats` gives them) of `root` and its descendants, by PID."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry, fields in proc_stats():
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            tree[pid] = stats[pid]
        todo += children.get(pid, [])
    return tree


def command_line(pid: int) -> str | None:
    """The process's command line, its arguments joined by spaces; None once it has exited."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None

"""The layout is the architecture (README "Layout", docs/layout.md): dependencies point one
way, flows -> tasks -> agents, and the domain (the modules directly in agents/) does no I/O:
it imports neither its adapters nor any library that reaches a network, a process or a
server."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What the domain may import besides the standard library and itself.
DOMAIN_LIBRARIES = {"pydantic", "pydantic_settings", "yaml"}
# The standard library's I/O: processes, sockets, threads, event loops, foreign calls.
STDLIB_IO = {
    "asyncio",
    "ctypes",
    "fcntl",
    "http",
    "multiprocessing",
    "resource",
    "shutil",
    "signal",
    "socket",
    "ssl",
    "subprocess",
    "tempfile",
    "threading",
    "urllib",
}
# Each top-level package, and what it may not import.
LAYERS = {
    "agents": {"tasks", "flows", "bench", "tests", "support"},
    "tasks": {"flows", "bench", "tests", "support"},
    "flows": {"bench", "tests", "support"},
    # Servers and processes for the tests and the benchmarks: it serves both, imports neither.
    "support": {"bench", "tests"},
    "bench": {"tests"},
}


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in a file, lazy ones inside functions included."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def domain_violations(path: Path) -> list[str]:
    problems = []
    for line, module in imports(path):
        top = module.split(".")[0]
        where = f"{path.name}:{line} imports {module}"
        if module == "agents.adapters" or module.startswith("agents.adapters."):
            problems.append(f"{where}: the domain never imports its adapters")
        elif top in STDLIB_IO:
            problems.append(f"{where}: I/O belongs in agents/adapters/")
        elif top not in sys.stdlib_module_names and top not in DOMAIN_LIBRARIES | {"agents", "__future__"}:
            problems.append(f"{where}: a library the domain does not use")
    return problems


def layer_violations(package: str, paths: list[Path]) -> list[str]:
    return [
        f"{path.name}:{line} imports {module}"
        for path in paths
        for line, module in imports(path)
        if module.split(".")[0] in LAYERS[package]
    ]


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_dependencies_point_one_way(package: str) -> None:
    assert layer_violations(package, sorted((ROOT / package).rglob("*.py"))) == []


def test_the_domain_does_no_io_and_imports_no_adapter() -> None:
    domain = sorted((ROOT / "agents").glob("*.py"))
    assert len(domain) > 10
    assert [problem for path in domain for problem in domain_violations(path)] == []


def test_the_checks_catch_what_they_name(tmp_path: Path) -> None:
    # The rules themselves can fail: each kind of violation, written as a module would.
    module = tmp_path / "probe.py"
    module.write_text(
        "import httpx\nimport subprocess\nfrom agents.adapters.llm import ChatClient\n\n\n"
        "def f() -> None:\n    from flows.deliberate import deliberate\n"
    )
    problems = domain_violations(module)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "a library the domain does not use",
        "I/O belongs in agents/adapters/",
        "the domain never imports its adapters",
        "a library the domain does not use",
    ]
    assert layer_violations("agents", [module]) == ["probe.py:7 imports flows.deliberate"]

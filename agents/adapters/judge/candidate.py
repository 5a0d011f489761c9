"""The candidate's process: imports the proposal's solution and answers the harness's
requests about it, one at a time, over two pipes.

Run by agents/adapters/sandbox.py, confined by confine.py like the harness, with the
request's context files and `solution.py` (nothing of the tests) in its read-only working
directory. It holds every object the candidate's code gives out and sends the harness only
values (see wire.py) or references to them. Whatever the candidate's code does here
(patching pytest, builtins or this module, exiting, printing, writing files) can change or
stop nothing but its own answers: the tests and the count are in processes it never runs in.

A context module that defines a name the solution also defines is imported here with the
solution run in it after the module's own code (as if appended to the file): the
candidate's definitions win, and the rest of the project, imported here, sees them.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import json
import operator
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from . import wire

SOLUTION = "solution"
# What the harness may apply to an object of the candidate's, besides calls and attributes.
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "bool": bool,
    "len": len,
    "repr": repr,
    "str": str,
    "iter": iter,
    "next": next,
    "getitem": operator.getitem,
    "setitem": operator.setitem,
    "delitem": operator.delitem,
    "contains": operator.contains,
}


class _SolutionAfterContext(importlib.abc.Loader):
    def __init__(self, loader: Any, solution: Path) -> None:
        self._loader, self._solution = loader, solution

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        source = self._solution.read_text()
        exec(compile(source, str(self._solution), "exec"), vars(module))


class _TakenOver(importlib.abc.MetaPathFinder):
    """The context modules the solution takes over (the sandbox decides which, from the
    sources): found where they are, run with the solution appended."""

    def __init__(self, names: Sequence[str], solution: Path) -> None:
        self._names, self._solution = frozenset(names), solution

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self._names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _SolutionAfterContext(spec.loader, self._solution)
        return spec


class _Server:
    def __init__(self, modules: Sequence[str]) -> None:
        self._modules = frozenset(modules)
        self._objects: list[Any] = []

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"value": wire.encode(self._handle(request), self._refer)}
        except Exception as exc:
            return {"error": describe(exc)}

    def _handle(self, request: dict[str, Any]) -> Any:
        op = request.get("op")
        if op == "import":
            name = request.get("module")
            if name not in self._modules:
                raise ImportError(f"{name!r} is not a module of the candidate's")
            module = importlib.import_module(str(name))
            members = {key: value for key, value in vars(module).items() if not key.startswith("__")}
            return {"module": module, "members": members}
        target = self._object(request.get("ref"))
        if op == "getattr":
            return getattr(target, str(request.get("name")))
        if op == "setattr":
            setattr(target, str(request.get("name")), self._decode(request.get("value")))
            return None
        args = self._decode(request.get("args"))
        if type(args) is not list:
            raise TypeError("arguments must be a list")
        if op == "call":
            kwargs = self._decode(request.get("kwargs"))
            if type(kwargs) is not dict or not all(type(key) is str for key in kwargs):
                raise TypeError("keyword arguments must be a dict with str keys")
            return target(*args, **kwargs)
        if op == "apply" and request.get("function") in FUNCTIONS:
            return FUNCTIONS[str(request.get("function"))](target, *args)
        raise ValueError(f"not a request of this protocol: {str(op)[:100]}")

    def _refer(self, value: Any) -> dict[str, Any]:
        self._objects.append(value)
        return {"ref": len(self._objects) - 1, "type": type(value).__name__}

    def _object(self, ref: Any) -> Any:
        if type(ref) is not int or not 0 <= ref < len(self._objects):
            raise ValueError(f"no object of the candidate's numbered {str(ref)[:20]}")
        return self._objects[ref]

    def _decode(self, node: Any) -> Any:
        return wire.decode(node, lambda reference: self._object(reference.get("ref")))


def describe(exc: BaseException) -> dict[str, str]:
    try:
        message = str(exc)
    except Exception:
        message = "(its message could not be read)"
    return {"type": type(exc).__name__, "message": message[: wire.MAX_TEXT]}


def main() -> None:
    """Answer requests until the harness closes its pipe."""
    config = json.loads(sys.argv[1])
    wire.allow_long_ints()
    workdir = Path.cwd()
    sys.path.insert(1, str(workdir))  # -I puts neither the script's nor the working directory
    taken_over = list(config["taken_over"])
    sys.meta_path.insert(0, _TakenOver(taken_over, workdir / f"{SOLUTION}.py"))
    server = _Server([SOLUTION, *taken_over])
    with os.fdopen(config["requests_fd"], "rb") as requests, os.fdopen(config["answers_fd"], "wb") as answers:
        while True:
            try:
                request = wire.receive(requests)
            except wire.WireError:
                return
            answer = server.answer(request)
            try:
                wire.send(answers, answer)
            except wire.WireError as exc:
                wire.send(answers, {"error": {"type": "AnswerTooLarge", "message": str(exc)}})

"""What every command of the project does with bad input: one line naming the problem,
and a non-zero exit."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from pydantic import ValidationError


class UsageParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr and exit `usage_exit`."""

    def __init__(self, *args: Any, usage_exit: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._usage_exit = usage_exit
        self._name = self.prog.rsplit(".", 1)[-1]

    def error(self, message: str) -> NoReturn:
        self.exit(self._usage_exit, f"{self._name}: {message} (see --help)\n")


def describe_validation_error(exc: ValidationError) -> str:
    """The first problem pydantic found, in one line: `invalid <where>: <what>`."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "input"
    message = error["msg"].removeprefix("Value error, ")
    return f"invalid {where}: {message}"

"""What every command of the project does with bad usage: one line naming the problem,
and a non-zero exit (agents.errors.describe_validation_error words invalid values)."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn


class UsageParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr and exit `usage_exit`."""

    def __init__(self, *args: Any, usage_exit: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._usage_exit = usage_exit
        self._name = self.prog.rsplit(".", 1)[-1]

    def error(self, message: str) -> NoReturn:
        self.exit(self._usage_exit, f"{self._name}: {message} (see --help)\n")

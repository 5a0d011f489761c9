"""Prefect's console lines, plain where no terminal reads them (flows/runtime/console.py)."""

from __future__ import annotations

import io
import logging

import pytest
from prefect.logging.handlers import PrefectConsoleHandler

from flows.runtime.console import every_logger, plain_console_logs


@pytest.fixture(autouse=True)
def handlers_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    # plain_console_logs swaps handlers on every logger of the process: put them back after.
    for logger in every_logger():
        monkeypatch.setattr(logger, "handlers", list(logger.handlers))


def test_the_console_handler_becomes_a_plain_one_writing_the_same_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    console = PrefectConsoleHandler(stream=stream, level=logging.INFO)
    console.setFormatter(logging.Formatter("%(levelname)s | %(name)s - %(message)s"))
    logger = logging.getLogger("deliberation.test-console")
    monkeypatch.setattr(logger, "handlers", [console])
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr("sys.stderr", io.StringIO())  # no terminal
    plain_console_logs()
    [plain] = logger.handlers
    assert type(plain) is logging.StreamHandler and plain.level == logging.INFO
    logger.warning("a [bold]line[/bold] at %s", "http://127.0.0.1:4200")
    logger.debug("below the handler's level")
    assert (
        stream.getvalue()
        == "WARNING | deliberation.test-console - a [bold]line[/bold] at http://127.0.0.1:4200\n"
    )


def test_on_a_terminal_prefects_handler_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    console = PrefectConsoleHandler(stream=io.StringIO())
    logger = logging.getLogger("deliberation.test-console-tty")
    monkeypatch.setattr(logger, "handlers", [console])

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    plain_console_logs()
    assert logger.handlers == [console]

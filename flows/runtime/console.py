"""Prefect's console log lines, written plainly where no terminal reads them."""

from __future__ import annotations

import logging
import sys

from prefect.logging.handlers import PrefectConsoleHandler


def plain_console_logs() -> None:
    """Swap Prefect's console handlers for plain StreamHandlers writing the same lines, when
    stderr is no terminal (a service's log collector, a Ray worker's log file). Prefect's
    handler renders each line with rich, which sizes the terminal from the environment on
    every line: a tenth of a busy runner's CPU (BENCHMARKS.md, issue 31), for colours no
    one sees."""
    if sys.stderr.isatty():
        return
    for logger in every_logger():
        for console in [h for h in logger.handlers if isinstance(h, PrefectConsoleHandler)]:
            plain = logging.StreamHandler(console.stream)
            plain.setLevel(console.level)
            plain.setFormatter(console.formatter)
            for log_filter in console.filters:
                plain.addFilter(log_filter)
            logger.removeHandler(console)
            logger.addHandler(plain)


def every_logger() -> list[logging.Logger]:
    """The root logger and every named one made so far (Prefect's handlers hang on several)."""
    return [logging.getLogger(), *(logging.getLogger(name) for name in logging.root.manager.loggerDict)]

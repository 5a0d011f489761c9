"""Waiting in tests for what other threads and processes do, always with a bound."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(condition: Callable[[], Any], timeout: float, every: float = 0.1) -> None:
    """Return once `condition()` is true; fail the test if it is not within `timeout` s."""
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, "condition not met in time"
        time.sleep(every)

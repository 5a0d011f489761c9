"""Wall time per stage of a deliberation, for its result's usage report."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class StageClock:
    """Wall time per stage, in milliseconds; a critique stage covers its revisions, and
    "tests" is the run of the proposals' code."""

    def __init__(self) -> None:
        self.ms: dict[str, int] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.ms[str(stage)] = self.ms.get(str(stage), 0) + int((time.monotonic() - started) * 1000)

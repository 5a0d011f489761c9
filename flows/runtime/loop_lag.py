"""How late an event loop runs what is due: the measure of a process too busy to answer
NATS in time (its heartbeats, and the timeouts of its requests, run on that loop)."""

from __future__ import annotations

import asyncio
import time

EVERY_SECONDS = 0.1


class LoopLag:
    """Wakes every `every` s on the running loop and keeps how late each wake-up came, for
    the window since it was last read."""

    def __init__(self, every: float = EVERY_SECONDS) -> None:
        self._every = every
        self._late: list[float] = []

    async def watch(self) -> None:
        """Until cancelled."""
        while True:
            due = time.monotonic() + self._every
            await asyncio.sleep(self._every)
            self._late.append(max(0.0, time.monotonic() - due))

    def window(self) -> str:
        """p50, p99 and max of the lag (ms) since the last call, and the samples; a new
        window starts."""
        late, self._late = sorted(self._late), []
        if not late:
            return "no samples"

        def at(share: float) -> float:
            return late[min(len(late) - 1, int(share * len(late)))] * 1000

        most = late[-1] * 1000
        return f"p50 {at(0.5):.1f} ms, p99 {at(0.99):.1f} ms, max {most:.0f} ms ({len(late)} samples)"

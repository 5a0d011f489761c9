"""Progress of a deliberation in the terminal, read from the Prefect API as the UI reads it:
every model call is a task run of the flow run, named after the call.

On a TTY: a table of agents and stages that updates as calls start, retry and finish, with
elapsed times (rich, which Prefect already installs). Otherwise: one plain line on stderr
per change of a call's state. The flow keeps the main thread; this runs beside it.
"""

from __future__ import annotations

import contextvars
import queue
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any
from uuid import UUID

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from agents.models import AgentSpec, Stage

POLL_SECONDS = 0.5
FINAL_SYNC_SECONDS = 10.0
# The temporary API records task runs in batches flushed every 2 s (flows/runtime/temporary_api.py).
SETTLED_SECONDS = 3.0
PAGE = 200  # the API's default page size
STAGES = [Stage.PROPOSAL, Stage.CRITIQUE, Stage.REVISION, Stage.RANKING]
TESTS = "tests"  # a column of its own with --run-code: the run_tests task runs, `<agent id>.tests`


@dataclass(frozen=True)
class CallProgress:
    """One model call's task run, as the API shows it."""

    name: str
    agent_id: str
    stage: str  # a Stage, or TESTS
    state: str  # the state's name: Pending, Running, Retrying, AwaitingRetry, Completed, ...
    final: bool
    ok: bool
    attempts: int
    seconds: float


def call_of(
    name: str, state: str, final: bool, ok: bool, attempts: int, seconds: float
) -> CallProgress | None:
    """A model call or a run of an agent's code against the others' tests, from its task
    run's name, `<agent id>.<stage>...` (agents.calls.run_name); None otherwise."""
    agent_id, _, rest = name.partition(".")
    stage = rest.partition(".")[0]
    if stage != TESTS and stage not in set(Stage):
        return None
    kind = TESTS if stage == TESTS else Stage(stage)
    return CallProgress(name, agent_id, kind, state, final, ok, attempts, seconds)


def cell(calls: Sequence[CallProgress]) -> str:
    """One agent's calls of one stage, in a few characters."""
    if not calls:
        return ""
    done = [c for c in calls if c.final]
    failed = [c for c in done if not c.ok]
    longest = max(c.seconds for c in calls)
    retrying = sum(1 for c in calls if c.state in ("Retrying", "AwaitingRetry"))
    if len(done) < len(calls):
        mark = f"retry ({max(c.attempts for c in calls)})" if retrying else "running"
    elif failed:
        mark = failed[0].state.lower() if len(calls) == 1 else f"{len(failed)} of {len(calls)} failed"
    else:
        mark = "done"
    count = f"{len(done)}/{len(calls)} " if len(calls) > 1 else ""
    return f"{count}{mark} {longest:.1f}s"


def progress_table(
    agents: Sequence[AgentSpec], calls: Sequence[CallProgress], models: Mapping[str, str] | None = None
) -> Table:
    """One row per agent, one column per stage; a MODEL column when the council mixes models."""
    table = Table(expand=False)
    table.add_column("AGENT")
    table.add_column("ROLE")
    mixed = models is not None and len({models.get(agent.agent_id) for agent in agents}) > 1
    if mixed:
        table.add_column("MODEL")
    columns: list[str] = [*STAGES, *([TESTS] if any(c.stage == TESTS for c in calls) else [])]
    for stage in columns:
        table.add_column(str(stage).upper())
    for agent in agents:
        mine = [c for c in calls if c.agent_id == agent.agent_id]
        model = [models.get(agent.agent_id, "") if models else ""] if mixed else []
        table.add_row(
            agent.agent_id,
            str(agent.role),
            *model,
            *(cell([c for c in mine if c.stage == s]) for s in columns),
        )
    synthesis = [c for c in calls if c.stage == Stage.SYNTHESIS]
    if synthesis:
        table.caption = f"synthesis: {cell(synthesis)}"
    return table


# Module-level, so that the hook pickles by reference: Prefect sends the flow, hooks and
# all, to the call hosts with its context.
_started: queue.SimpleQueue[UUID] = queue.SimpleQueue()


def follow_flow_run(flow: Any, flow_run: Any, state: Any) -> None:
    """A flow `on_running` hook: tells the LiveProgress of this process which run to follow."""
    _started.put(flow_run.id)


class LiveProgress:
    """`with LiveProgress(agents, deliberation_id):` run the flow with
    `on_running=[follow_flow_run]`."""

    def __init__(
        self,
        agents: Sequence[AgentSpec],
        deliberation_id: str,
        tty: bool | None = None,
        models: Mapping[str, str] | None = None,
    ) -> None:
        self.agents = list(agents)
        self.models = dict(models or {})
        self.deliberation_id = deliberation_id
        self.tty = sys.stdout.isatty() if tty is None else tty
        self._flow_run_id: UUID | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()
        self._seen: dict[str, tuple[str, int]] = {}
        self._live: Live | None = None
        self.expected = 0  # calls the last frame waits to see; the caller sets it once known

    def __enter__(self) -> LiveProgress:
        if self.tty:
            self._live = Live(self._table([]), console=Console(), refresh_per_second=4, transient=False)
            self._live.start()
        # In a copy of this context, which holds the Prefect API's settings: a thread
        # starts with an empty one, and Prefect's client would start an ephemeral server.
        self._thread = threading.Thread(
            target=contextvars.copy_context().run, args=(self._watch,), name="live-progress", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        # The API records states from events a moment after they happen: the last frame
        # waits (briefly) until every call shows how it ended.
        # Interrupted or failed: one last frame as things stand.
        give_up = time.monotonic() + (FINAL_SYNC_SECONDS if exc_info[0] is None else 0.0)
        calls = self._poll()
        unchanged_since, last = time.monotonic(), calls
        while (len(calls) < self.expected or any(not c.final for c in calls)) and time.monotonic() < give_up:
            # A resumed run's result counts calls an earlier run made: once every call seen
            # is final and nothing has changed for longer than the API takes to record a
            # task run, nothing more will come.
            if calls != last:
                unchanged_since, last = time.monotonic(), calls
            elif all(c.final for c in calls) and time.monotonic() - unchanged_since > SETTLED_SECONDS:
                break
            time.sleep(POLL_SECONDS / 2)
            calls = self._poll()
        self._show(calls, final=True)
        if self._live is not None:
            self._live.stop()

    def _watch(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self._show(self._poll(), final=False)

    def _table(self, calls: Sequence[CallProgress], final: bool = False) -> Group:
        elapsed = time.monotonic() - self._started
        done = sum(1 for c in calls if c.final)
        verb = "finished in" if final else "running for"
        title = (
            f"deliberation {self.deliberation_id}: {done} of {len(calls)} calls done, {verb} {elapsed:.1f}s"
        )
        return Group(Text(title), progress_table(self.agents, calls, self.models))

    def _show(self, calls: list[CallProgress], final: bool) -> None:
        if self._live is not None:
            self._live.update(self._table(calls, final))
            return
        for call in calls:
            now = (call.state, call.attempts)
            if self._seen.get(call.name) != now:
                self._seen[call.name] = now
                _line(
                    sys.stderr,
                    f"{time.monotonic() - self._started:6.1f}s {call.name} {call.state.lower()}"
                    f" (attempt {max(call.attempts, 1)}, {call.seconds:.1f}s)",
                )

    def _poll(self) -> list[CallProgress]:
        while not _started.empty():
            self._flow_run_id = _started.get()
        if self._flow_run_id is None:
            return []
        from prefect import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
        from prefect.client.schemas.sorting import TaskRunSort

        runs: list[Any] = []
        try:
            with get_client(sync_client=True) as client:
                while True:
                    page = client.read_task_runs(
                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[self._flow_run_id])),
                        sort=TaskRunSort.EXPECTED_START_TIME_ASC,
                        limit=PAGE,
                        offset=len(runs),
                    )
                    runs += page
                    if len(page) < PAGE:
                        break
        except Exception:  # progress is best effort; the run itself is not affected
            return []
        now = datetime.now(UTC)
        calls = []
        for run in runs:
            state = run.state
            if state is None:
                continue
            started = run.start_time or run.expected_start_time or now
            ended = run.end_time if state.is_final() else None
            call = call_of(
                run.name,
                state.name or str(state.type),
                state.is_final(),
                state.is_completed(),
                run.run_count,
                max(0.0, ((ended or now) - started).total_seconds()),
            )
            if call is not None:
                calls.append(call)
        return calls


def _line(stream: IO[str], text: str) -> None:
    stream.write(text + "\n")
    stream.flush()

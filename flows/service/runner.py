"""The runners of the service: requests taken from the intake, each run as a flow run of
`deliberate` on a thread of its own, and the status record kept as the run goes."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from nats.aio.msg import Msg
from prefect.logging import get_logger
from prefect.states import State
from pydantic import ValidationError

from agents.adapters.nats import JetStreamBus
from agents.adapters.nats.intake import Intake
from agents.errors import describe_validation_error, is_decided
from agents.events import DeliberationProgressEvent
from agents.models import DeliberationRequest, DeliberationResult
from agents.service import DeliberationState, StatusRecord
from agents.settings import Settings
from flows.deliberate import deliberate
from flows.runtime import metrics
from flows.runtime.loop_lag import LoopLag
from flows.runtime.run_hooks import Watch, on_running, watching
from flows.service.records import (
    CANCELLED_BY_SERVICE,
    announce_accepted,
    cancel_flow_run,
    conclude_without_run,
    crash_abandoned_run,
    record_accepted,
    utc_now,
)

log = get_logger("deliberation")
TAKE_SECONDS = 1.0  # how long a runner with a free slot waits for a request before asking again
RETRY_DELAY_SECONDS = 2.0  # before a crashed run's request is delivered again
LAG_REPORT_SECONDS = 10


class Runner:
    """Takes requests from the intake, at most `concurrency` at once, and runs each as a flow
    run of `deliberate` on a thread of its own; the rest wait in the stream."""

    def __init__(self, bus: JetStreamBus, intake: Intake, settings: Settings) -> None:
        self._bus = bus
        self._intake = intake
        self._settings = settings
        self._slots = asyncio.Semaphore(settings.service_concurrency)
        self._running: set[asyncio.Task[None]] = set()
        # By deliberation id, every delivery of a request that runs here (see Deliveries).
        self._held: dict[str, Deliveries] = {}
        # A thread per slot: asyncio's default pool has min(32, cores + 4) threads, so on
        # 2 cores a runner ran 6 deliberations at once whatever its concurrency said, and
        # held the others it had taken in the pool's queue.
        self._threads = ThreadPoolExecutor(settings.service_concurrency, thread_name_prefix="deliberate")

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set; then waits for the deliberations it runs."""
        watching_lag = asyncio.create_task(self._report_lag())
        try:
            await self._take_until(stop)
        finally:
            watching_lag.cancel()
            self._threads.shutdown(wait=False)

    async def _report_lag(self) -> None:
        """Log how late the event loop that talks to NATS ran, every LAG_REPORT_SECONDS in
        which deliberations ran here: a loop seconds late is a runner that takes more than
        it serves (its heartbeats and replies are late)."""
        lag = LoopLag()
        watching = asyncio.create_task(lag.watch())
        try:
            while True:
                busy = 0
                for _ in range(int(LAG_REPORT_SECONDS)):
                    await asyncio.sleep(1)
                    busy = max(busy, len(self._running))
                window = lag.window()
                if busy:
                    log.info(
                        "event loop lag, last %d s, up to %d deliberations running: %s",
                        LAG_REPORT_SECONDS,
                        busy,
                        window,
                    )
        finally:
            watching.cancel()

    async def _take_until(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._slots.acquire()
            try:
                msg = await self._intake.take(TAKE_SECONDS)
            except Exception as exc:  # NATS away for a moment: take again
                log.warning("taking a request failed: %s", exc)
                msg = None
                await asyncio.sleep(TAKE_SECONDS)
            if msg is None:
                self._slots.release()
                continue
            task = asyncio.create_task(self._handle(msg))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _handle(self, msg: Msg) -> None:
        request = _intake_request(msg)
        key = (request.deliberation_id or "") if request is not None else None
        if key in self._held:
            # Delivered again while it runs here: its heartbeats were lost (NATS away
            # longer than the ack wait). The run in progress answers for this delivery too.
            self._held[key].add(msg)
            log.warning("deliberation %s delivered again while it runs here", key)
            self._slots.release()
            return
        deliveries = Deliveries(msg)
        if key is not None:
            self._held[key] = deliveries
        heartbeat = asyncio.create_task(self._heartbeat(deliveries))
        try:
            await self._deliberate(request, deliveries)
        except Exception as exc:  # never lose the slot or leave the message unanswered
            log.exception("request %s: %s; it will be delivered again", msg.subject, exc)
            with contextlib.suppress(Exception):
                await deliveries.nak(delay=RETRY_DELAY_SECONDS)
        finally:
            heartbeat.cancel()
            if key is not None:
                self._held.pop(key, None)
            self._slots.release()

    async def _heartbeat(self, deliveries: Deliveries) -> None:
        """Tell JetStream the request is being worked on, so it is not delivered again."""
        while True:
            await asyncio.sleep(self._settings.service_ack_wait_seconds / 3)
            with contextlib.suppress(Exception):
                await deliveries.in_progress()

    async def _deliberate(self, request: DeliberationRequest | None, msg: Deliveries) -> None:
        if request is None:
            await msg.term()
            return
        deliberation_id = request.deliberation_id or ""
        known = await self._intake.status(deliberation_id)
        if known is None:  # taken before its submit recorded it: the record is made here
            accepted = await record_accepted(self._intake, request)
            if accepted.created:
                await announce_accepted(self._bus, request)
            known = accepted.record, accepted.revision
        if known[0].status.concluded:  # cancelled before it started, or done
            await msg.ack()
            return
        record, _ = known
        tries = msg.metadata.num_delivered
        log.info("deliberation %s taken (delivery %d)", deliberation_id, tries)
        if record.status is DeliberationState.RUNNING and record.flow_run_id is not None:
            # Running elsewhere, by its record, yet delivered here: its runner stopped
            # telling JetStream it works on it (killed, or cut off for the ack wait).
            await self._crash_abandoned(record.flow_run_id, deliberation_id, tries)
        if tries > self._settings.service_max_tries:
            reason = f"failed on every one of {self._settings.service_max_tries} tries: {record.reason}"
            await self._conclude(record, DeliberationState.FAILED, reason, msg)
            return

        loop = asyncio.get_running_loop()

        def started(flow_run_id: str) -> None:
            asyncio.run_coroutine_threadsafe(self._started(request, flow_run_id, tries), loop).result(30)

        recorded: list[DeliberationResult] = []  # what the run had recorded before announcing it

        def concluding(result: DeliberationResult) -> None:
            asyncio.run_coroutine_threadsafe(self._finished(deliberation_id, result), loop).result(30)
            recorded.append(result)

        with watching(deliberation_id, Watch(started, concluding)), metrics.RUNNING.track_inprogress():
            # In this context, as to_thread would: the flow run's Prefect API is in it.
            run_here = contextvars.copy_context().run
            state, value = await loop.run_in_executor(self._threads, run_here, _run_flow, request)
        if isinstance(value, DeliberationResult):
            if value not in recorded:  # its record was not updated before the announcement
                await self._finished(deliberation_id, value)
            await msg.ack()
            return
        reason = f"try {tries}: {_one_line(value, state)}"
        latest = await self._intake.status(deliberation_id)
        assert latest is not None
        if is_decided(value) or tries >= self._settings.service_max_tries:
            # A decided failure (bad configuration, an id reused) or the last try.
            await self._conclude(latest[0], DeliberationState.FAILED, reason, msg)
            return
        waiting = latest[0].model_copy(
            update={
                "status": DeliberationState.ACCEPTED,
                "tries": tries,
                "reason": reason,
                "updated_at": utc_now(),
            }
        )
        await self._intake.update_status(waiting, latest[1])
        log.warning("deliberation %s %s; it will be tried again", deliberation_id, reason)
        await msg.nak(delay=RETRY_DELAY_SECONDS)

    @staticmethod
    async def _crash_abandoned(flow_run_id: str, deliberation_id: str, tries: int) -> None:
        reason = f"its runner stopped; deliberation {deliberation_id} was taken over (delivery {tries})"
        try:
            await crash_abandoned_run(flow_run_id, reason)
        except Exception as exc:  # the UI's view of an old run: never a reason not to run
            log.warning(
                "flow run %s of deliberation %s not marked crashed: %s", flow_run_id, deliberation_id, exc
            )

    async def _started(self, request: DeliberationRequest, flow_run_id: str, tries: int) -> None:
        deliberation_id = request.deliberation_id or ""
        running = {"status": DeliberationState.RUNNING, "flow_run_id": flow_run_id, "tries": tries}
        record = await self._intake.change_status(
            deliberation_id,
            lambda r: (
                None if r.status.concluded else r.model_copy(update=running | {"updated_at": utc_now()})
            ),
        )
        if record is not None and record.status.concluded:  # cancelled as it started: stop it at once
            await cancel_flow_run(flow_run_id, record.reason or CANCELLED_BY_SERVICE)
            return
        event = DeliberationProgressEvent(
            deliberation_id=deliberation_id,
            task_id=request.task_id or deliberation_id,
            status="started",
            flow_run_id=flow_run_id,
            attempt=tries,
        )
        await self._bus.publish(event)

    async def _finished(self, deliberation_id: str, result: DeliberationResult) -> None:
        """The flow run concluded it: told by the run once its result is stored, before it
        is announced; or, if telling failed, when the run returns."""
        done = {"status": DeliberationState(result.status.value), "reason": result.summary}
        await self._intake.change_status(
            deliberation_id, lambda r: r.model_copy(update=done | {"updated_at": utc_now()})
        )
        # Counted as `get` first says so.
        metrics.CONCLUDED.labels(result.status.value).inc()
        metrics.DURATION.observe(result.duration_ms / 1000)

    async def _conclude(
        self, record: StatusRecord, status: DeliberationState, reason: str, msg: Deliveries
    ) -> None:
        while await conclude_without_run(self._bus, self._intake, record, status, reason) is None:
            known = await self._intake.status(record.deliberation_id)
            if known is None or known[0].status.concluded:
                break
            record = known[0]
        log.warning("deliberation %s %s: %s", record.deliberation_id, status, reason)
        await msg.ack()


class Deliveries:
    """Every delivery of one request that this runner holds: the one it took, and any the
    intake delivered again while it ran. Each is answered alike; the newest is the one
    JetStream waits on, so only its errors count."""

    def __init__(self, msg: Msg) -> None:
        self._msgs = [msg]

    def add(self, msg: Msg) -> None:
        self._msgs.append(msg)

    @property
    def metadata(self) -> Msg.Metadata:
        return self._msgs[0].metadata

    async def ack(self) -> None:
        await self._each(lambda m: m.ack())

    async def nak(self, delay: float) -> None:
        await self._each(lambda m: m.nak(delay=delay))

    async def term(self) -> None:
        await self._each(lambda m: m.term())

    async def in_progress(self) -> None:
        await self._each(lambda m: m.in_progress())

    async def _each(self, answer: Callable[[Msg], Awaitable[None]]) -> None:
        *older, newest = self._msgs
        for msg in older:
            with contextlib.suppress(Exception):
                await answer(msg)
        await answer(newest)


def _intake_request(msg: Msg) -> DeliberationRequest | None:
    """The request in an intake message, or None (and a log line) if it is not one the submit
    endpoint stores: a valid request with its deliberation id. Someone else may publish on
    the intake's subjects; without an id it was delivered again and again, for ever."""
    try:
        request = DeliberationRequest.model_validate_json(msg.data)
    except ValidationError as exc:
        why = describe_validation_error(exc)
    else:
        if request.deliberation_id:
            return request
        why = "no deliberation_id"
    log.warning("%s is not a deliberation request (%s); dropped", msg.subject, why)
    return None


# Once: with_options builds a new Flow, and a Flow builds its parameters' JSON schema (a
# quarter of a service process's CPU when it was built per run, BENCHMARKS.md).
# Its request is a DeliberationRequest the service validated already; Prefect would build a
# model of the flow's signature again at each run to validate it (5 % of a runner's CPU in
# a burst). Runs from the UI or a deployment still have theirs validated.
SERVICE_FLOW = deliberate.with_options(on_running=[on_running], validate_parameters=False)


def _run_flow(request: DeliberationRequest) -> tuple[State[Any], object]:
    """The flow run's final state and its value (a DeliberationResult, or what failed it)."""
    state = SERVICE_FLOW(request=request, return_state=True)
    return state, state.result(raise_on_failure=False)


def _one_line(value: object, state: State[Any]) -> str:
    text = str(value) if isinstance(value, BaseException) and str(value) else state.message or state.name
    return (text or "crashed").splitlines()[0]

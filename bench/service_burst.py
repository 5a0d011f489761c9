"""The deliberation service under a burst (issue 23): COUNT deliberations of 5 agents
submitted at once over NATS to RUNNERS runners (`python -m flows.service`), on a real
Prefect server (`prefect server start`) on PostgreSQL and on SQLite, against the emulated
model server (max_num_seqs 256, 1.0 s calls). Prints one table, the databases side by
side; see BENCHMARKS.md for how to read it.

    .venv/bin/python -m bench.service_burst                        # 100 deliberations, PostgreSQL then SQLite
    .venv/bin/python -m bench.service_burst --database postgresql  # one database
    .venv/bin/python -m bench.service_burst --count 6 --concurrency 4 --logs /tmp/burst  # small, logs kept
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import nats
from nats.aio.msg import Msg

from agents.adapters.nats import JetStreamBus
from agents.adapters.nats.intake import INTAKE_STREAM
from agents.errors import ConfigurationError
from agents.events import (
    DELIBERATION_CANCELLED,
    DELIBERATION_COMPLETED,
    DELIBERATION_FAILED,
    AgentResponseEvent,
    DeliberationEvent,
    DeliberationProgressEvent,
    Event,
    RankedEvent,
    parse_event,
)
from agents.models import DeliberationRequest
from agents.roles import Role
from agents.service import StatusReply, SubmitReply
from agents.settings import bus_config_for
from bench.profile import print_profile, profiling, top_items
from bench.run import (
    OUTPUT_TOKENS,
    TTFT,
    CpuSnapshot,
    EmulatorProcess,
    Figure,
    cpu_since,
    cpu_snapshot,
    percentile,
    print_rows,
    process_kind,
    proposal_requests,
    tree_memory_bytes,
)
from flows.runtime.embedded import LocalNatsServer, ManagedProcess, free_port
from support.agreement import assert_events_agree_with_result
from support.prefect_server import PREFECT, PrefectServer, api
from support.processes import command_line
from support.runner_process import RunnerProcess

CALL_SECONDS = 1.0  # the emulator's server time of one call: TTFT + per token x OUTPUT_TOKENS
MAX_NUM_SEQS = 256  # vLLM's default on most GPUs
SUBMIT_TIMEOUT = 30.0  # s; a submit with no reply by then counts as an error
# The probes: submits sent one at a time once the runners are saturated, PROBE_AFTER s after
# the burst, PROBE_EVERY s apart; the burst's last --probes requests.
PROBE_AFTER = 3.0
PROBE_EVERY = 0.1
FINAL_SUBJECTS = (DELIBERATION_COMPLETED, DELIBERATION_FAILED, DELIBERATION_CANCELLED)
ERROR_CODE = "Nats-Service-Error-Code"
DATABASES = ("postgresql", "sqlite")
# What the Prefect server's log says when it drops events: its in-memory broker's queue full,
# its task-run recorder out of retries, its event persister's queue full (a line per event);
# its event persister out of retries or of room for a failed batch (a line per batch).
DROPPED_ONE = re.compile(
    r"Subscription queue is full, dropping message"
    r"|Dropping event \S+ after \d+ failed attempts"
    r"|Event queue full \(\d+/\d+\), dropping event id="
)
DROPPED_MANY = re.compile(
    r"Max flush retries \(\d+\) reached, dropping (\d+) events|dropping (\d+) events that failed to flush"
)

ROLE_FRONT = {"DELIBERATION_SERVICE_ROLE": "front"}
ROLE_RUNNER = {"DELIBERATION_SERVICE_ROLE": "runner"}
MEMORY_SAMPLE_SECONDS = 0.5


# -- PostgreSQL -------------------------------------------------------------------------------
def postgres_bin_dir() -> Path:
    """The directory of `initdb` and `postgres`: on PATH, else Debian's
    /usr/lib/postgresql/<version>/bin (newest version first)."""
    on_path = [shutil.which(name) for name in ("initdb", "postgres")]
    if all(on_path):
        return Path(str(on_path[0])).resolve().parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        if all((Path(candidate) / name).exists() for name in ("initdb", "postgres")):
            return Path(candidate)
    raise ConfigurationError(
        "PostgreSQL not found: no initdb and postgres on PATH or under /usr/lib/postgresql/*/bin; "
        "install it (apt-get install postgresql) or run with --database sqlite"
    )


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path))


def _as_unprivileged(command: list[str]) -> list[str]:
    """`command` as it may run: PostgreSQL refuses to run as root, so under root it runs as
    the `postgres` user (else `nobody`), dying with us like the other servers."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise ConfigurationError("running as root, and PostgreSQL cannot: setpriv (util-linux) not found")
    user = _unprivileged_user()
    return [
        setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
        "--pdeathsig=TERM", "--", *command,
    ]  # fmt: skip


def _unprivileged_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return pwd.getpwnam("nobody")


class RedisServer(ManagedProcess):
    """A throwaway redis-server on a free loopback port, nothing saved, for the Prefect
    server's messaging (prefect-redis)."""

    name = "redis"

    def __init__(self, startup_timeout: float = 30.0) -> None:
        super().__init__(startup_timeout)

    def is_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ConfigurationError("--redis needs redis-server (Debian: apt-get install redis-server)")
        if importlib.util.find_spec("prefect_redis") is None:
            raise ConfigurationError(
                "--redis needs prefect-redis: .venv/bin/pip install prefect-redis==0.3.0"
            )
        return [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    def prefect_messaging(self) -> dict[str, str]:
        """The Prefect server's settings for messaging through this Redis."""
        return {
            "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
            "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
            "PREFECT_REDIS_MESSAGING_HOST": "127.0.0.1",
            "PREFECT_REDIS_MESSAGING_PORT": str(self.port),
        }


class PostgresServer(ManagedProcess):
    """A throwaway PostgreSQL cluster: initdb into a temporary directory, `postgres` on a free
    loopback port (its unix socket in that directory too), and a database for Prefect."""

    name = "postgresql"
    database = "prefect"

    def __init__(self, startup_timeout: float = 60.0) -> None:
        self.bin_dir = postgres_bin_dir()  # before a temporary directory is made
        super().__init__(startup_timeout)
        self.data_dir = self.workdir / "data"
        if os.geteuid() == 0:
            user = _unprivileged_user()
            os.chown(self.workdir, user.pw_uid, user.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{self.database}"

    def command(self) -> list[str]:
        return _as_unprivileged([
            str(self.bin_dir / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-k", str(self.workdir),
            "-c", "listen_addresses=127.0.0.1",
        ])  # fmt: skip

    def launch(self) -> None:
        # Trust on loopback and the socket: nothing but this benchmark reaches the cluster.
        # --no-sync: the cluster's files need not survive a crash of the machine.
        initdb = [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres"]
        initdb += ["--auth=trust", "-E", "UTF8", "--no-sync"]
        done = subprocess.run(_as_unprivileged(initdb), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ConfigurationError(f"initdb failed: {(done.stderr or done.stdout).strip()[-500:]}")
        super().launch()

    def start(self) -> None:
        super().start()
        asyncio.run(self._execute(f"CREATE DATABASE {self.database}"))

    def is_ready(self) -> bool:
        # It accepts connections before it can serve them ("the database system is starting up").
        try:
            asyncio.run(self._execute("SELECT 1"))
        except Exception:  # refused, starting up, timed out: not yet
            return False
        return True

    async def _execute(self, statement: str) -> None:
        import asyncpg

        connection = await asyncpg.connect(
            host="127.0.0.1", port=self.port, user="postgres", database="postgres", timeout=2
        )
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    def _terminate(self) -> None:
        # SIGINT is its fast shutdown, as `pg_ctl stop` and `pg_ctl restart` do by default.
        # The SIGTERM that follows is its smart shutdown, which would wait for every client
        # to disconnect: a restart then kept PostgreSQL refusing connections for 10 s (until
        # the SIGKILL), not the 5 s asked, and it came back through crash recovery.
        if self.pid is not None:
            with suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGINT)
        super()._terminate()


# -- the service: its servers and runners -----------------------------------------------------
@dataclass
class Service:
    nats_url: str
    runners: list[RunnerProcess]
    prefect: PrefectServer
    nats: LocalNatsServer
    grpc_address: str | None = None  # the front's fleet API, with --front
    postgres: ManagedProcess | None = None  # the Prefect server's database, on PostgreSQL

    def postgres_restart(self, down_for: float) -> None:
        if self.postgres is None:
            raise ConfigurationError("--restart-postgres needs --database postgresql")
        self.postgres.restart(down_for)


@contextmanager
def running_service(
    database: str,
    model_url: str,
    runners: int,
    concurrency: int,
    workdir: Path,
    front: bool = False,
    redis: bool = False,
    server_prefect: str | None = None,
) -> Iterator[Service]:
    """Everything the service needs, started for one database and stopped on exit (Ctrl-C
    included): PostgreSQL (unless SQLite), the Prefect server, a nats-server and the runners."""
    with ExitStack() as stack:
        nats_server = stack.enter_context(LocalNatsServer())
        database_url = None
        postgres = None
        if database == "postgresql":
            postgres = stack.enter_context(PostgresServer())
            keep_log(stack, postgres, workdir / f"{database}-postgresql.log")
            database_url = postgres.url
        prefect = PrefectServer.on_database(database_url, executable=server_prefect or PREFECT)
        if redis:  # Prefect's messaging for scale: its events through Redis streams, acknowledged
            redis_server = stack.enter_context(RedisServer())
            keep_log(stack, redis_server, workdir / f"{database}-redis.log")
            prefect.env = (prefect.env or {}) | redis_server.prefect_messaging()
        stack.enter_context(prefect)
        keep_log(stack, prefect, workdir / f"{database}-prefect-server.log")
        env = runner_env(nats_server.url, model_url, prefect.api_url, concurrency, workdir / database)
        started: list[RunnerProcess] = []
        stack.callback(stop_runners, started)  # each stopped, however far the starting got
        grpc_address = None
        if front:  # the endpoints (and the fleet API) in a process of their own; the runners only run
            grpc_port = free_port()
            grpc_address = f"127.0.0.1:{grpc_port}"
            front_env = env | ROLE_FRONT | {"DELIBERATION_GRPC_PORT": str(grpc_port)}
            started.append(RunnerProcess(front_env, workdir / f"{database}-front.log"))
            env |= ROLE_RUNNER
        for i in range(runners):
            started.append(RunnerProcess(env, workdir / f"{database}-runner-{i + 1}.log"))
        for runner in started:  # they start at once; each waited for in turn
            runner.wait_ready()
        yield Service(nats_server.url, started, prefect, nats_server, grpc_address, postgres)


def keep_log(stack: ExitStack, server: ManagedProcess, path: Path) -> None:
    """Copy the server's log to `path` before it stops (which removes the log)."""

    def copy() -> None:
        if server.log_path.exists():
            shutil.copyfile(server.log_path, path)

    stack.callback(copy)


def runner_env(
    nats_url: str, model_url: str, api_url: str, concurrency: int, workdir: Path
) -> dict[str, str]:
    """A runner's environment: the servers above, its own state directory and Prefect home,
    and a local Ray of its own (no RAY_ADDRESS)."""
    (workdir / "prefect-home").mkdir(parents=True, exist_ok=True)  # Prefect makes only the last level
    env = {k: v for k, v in os.environ.items() if k not in {"RAY_ADDRESS", "DELIBERATION_RAY_ADDRESS"}}
    return env | {
        "NATS_URL": nats_url,
        "VLLM_URL": model_url,
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(workdir / "prefect-home"),
        # As deploy/k8s's clients: the server protects nothing, so asking it for CSRF
        # tokens is a wasted round trip.
        "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "false",
        "DELIBERATION_SERVICE_CONCURRENCY": str(concurrency),
        "DELIBERATION_STATE_DIR": str(workdir / "state"),
    }


def stop_runners(runners: Sequence[RunnerProcess]) -> None:
    """Signal every runner first, then wait for each: they shut down their Ray at once."""
    for runner in runners:
        runner.terminate()
    for runner in runners:
        runner.stop()


# -- the burst ----------------------------------------------------------------------------------
def burst_requests(count: int) -> list[DeliberationRequest]:
    """`count` deliberations of the five roles, no review round, each with its id set here so
    that one whose submit failed can still be looked for. The deadline is long: the figures
    are about the service, not about agents cut short by a queue."""
    return [
        DeliberationRequest(
            # The id in the task: the model server's log says whose each call is.
            task=f"Benchmark task {deliberation_id}",
            roles=list(Role),
            rounds=0,
            deadline_seconds=600,
            deliberation_id=deliberation_id,
        )
        for deliberation_id in (uuid.uuid4().hex for _ in range(count))
    ]


@dataclass
class Submitted:
    deliberation_id: str
    seconds: float | None  # the reply's round trip; None if there was none
    error: str | None = None
    probe: bool = False  # sent alone while the runners were busy, not in the burst at once
    via: str = "nats"  # or "grpc": the fleet API's DeliberateForBacklogReview


@dataclass
class Burst:
    submitted: list[Submitted]
    sent_at: float  # time.monotonic() of the first submit
    concluded_at: dict[str, float] = field(default_factory=dict)  # final event seen, by id
    finals_seen: Counter[str] = field(default_factory=Counter)  # by a plain subscriber, by id
    get_behind: int = 0  # `get` asked on the final event answered a status not concluded

    @property
    def accepted(self) -> list[str]:
        return [s.deliberation_id for s in self.submitted if s.error is None]


async def run_burst(
    nats_url: str,
    requests: Sequence[DeliberationRequest],
    timeout: float,
    probes: int = 0,
    grpc_address: str | None = None,
) -> Burst:
    """Submit every request at once from one connection, but the last `probes`, which go
    one at a time once the runners are busy (every other one over the fleet API's gRPC at
    `grpc_address`, if given); then wait (at most `timeout` s) until a final event of each
    accepted one has been seen."""
    nc = await nats.connect(nats_url)
    try:
        concluded: dict[str, float] = {}
        seen_all = asyncio.Event()
        waiting_for: set[str] = {r.deliberation_id or "" for r in requests}

        finals_seen: Counter[str] = Counter()
        behind: list[str] = []
        getting: set[asyncio.Task[None]] = set()

        async def ask_get(deliberation_id: str) -> None:
            # The obvious client: told it concluded, it asks for the result.
            ref = json.dumps({"deliberation_id": deliberation_id}).encode()
            with suppress(nats.errors.Error, TimeoutError):
                reply = await nc.request("deliberation.get", ref, timeout=SUBMIT_TIMEOUT)
                if not StatusReply.model_validate_json(reply.data).status.concluded:
                    behind.append(deliberation_id)

        async def on_final(msg: Msg) -> None:
            # A core subscription sees every publish, a re-sent one too; the stream, read
            # afterwards, is what says whether anything was stored twice.
            deliberation_id = parse_event(msg.subject, msg.data).deliberation_id
            finals_seen[deliberation_id] += 1
            if deliberation_id not in concluded:
                task = asyncio.create_task(ask_get(deliberation_id))
                getting.add(task)
                task.add_done_callback(getting.discard)
            concluded.setdefault(deliberation_id, time.monotonic())
            if waiting_for <= concluded.keys():
                seen_all.set()

        for subject in FINAL_SUBJECTS:
            await nc.subscribe(subject, cb=on_final)
        await nc.flush()
        sent_at = time.monotonic()
        at_once, alone = list(requests[: len(requests) - probes]), list(requests[len(requests) - probes :])
        submitted = list(await asyncio.gather(*(_submit(nc, request) for request in at_once)))
        for i, request in enumerate(alone):
            await asyncio.sleep(max(0.0, sent_at + PROBE_AFTER + i * PROBE_EVERY - time.monotonic()))
            if grpc_address is not None and i % 2:
                submitted.append(replace(await _submit_over_grpc(grpc_address, request), probe=True))
            else:
                submitted.append(replace(await _submit(nc, request), probe=True))
        waiting_for = {s.deliberation_id for s in submitted if s.error is None}
        if waiting_for <= concluded.keys():
            seen_all.set()
        with suppress(TimeoutError):
            await asyncio.wait_for(seen_all.wait(), timeout)
        await asyncio.sleep(1)  # a second final event of any of them would be here by now
        if getting:
            await asyncio.wait(getting, timeout=SUBMIT_TIMEOUT)
        ours = {s.deliberation_id for s in submitted}
        seen = Counter({d: n for d, n in finals_seen.items() if d in ours})
        return Burst(submitted, sent_at, dict(concluded), seen, len(behind))
    finally:
        await nc.close()


async def _submit(nc: nats.NATS, request: DeliberationRequest) -> Submitted:
    deliberation_id = request.deliberation_id or ""
    sent = time.monotonic()
    try:
        reply = await nc.request(
            "deliberation.submit", request.model_dump_json().encode(), timeout=SUBMIT_TIMEOUT
        )
    except (nats.errors.Error, TimeoutError) as exc:
        return Submitted(deliberation_id, None, f"{type(exc).__name__}: {exc}")
    seconds = time.monotonic() - sent
    headers = reply.headers or {}
    if code := headers.get(ERROR_CODE):
        return Submitted(deliberation_id, seconds, f"error {code}: {headers.get('Nats-Service-Error')}")
    SubmitReply.model_validate_json(reply.data)  # the contract's reply, or it raises
    return Submitted(deliberation_id, seconds)


async def _submit_over_grpc(address: str, request: DeliberationRequest) -> Submitted:
    """The fleet API's asynchronous submit. It cannot ask for no review round (its `rounds`
    0 means 1), so these deliberations make more calls than the burst's."""
    from flows.service.fleet import orchestrator_pb2 as pb
    from flows.service.fleet import orchestrator_pb2_grpc as pb_grpc

    deliberation_id = request.deliberation_id or ""
    message = pb.DeliberateRequest(
        task_id=deliberation_id, task_description=request.task, num_agents=len(request.roles)
    )
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        await channel.channel_ready()  # the connection is not what is timed
        sent = time.monotonic()
        try:
            await stub.DeliberateForBacklogReview(message, timeout=SUBMIT_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return Submitted(deliberation_id, None, f"{exc.code().name}: {exc.details()}", via="grpc")
        return Submitted(deliberation_id, time.monotonic() - sent, via="grpc")


def warm_up(nats_url: str, count: int, timeout: float = 300.0) -> None:
    """A few deliberations first, not counted: each runner's first flow run starts its call
    hosts and Ray workers, which a service does once, not per burst."""
    if not count:
        return
    requests = burst_requests(count)
    done = asyncio.run(run_burst(nats_url, requests, timeout))
    if len(done.concluded_at) < count:
        raise RuntimeError(f"warm-up: {len(done.concluded_at)} of {count} concluded in {timeout:.0f} s")
    asyncio.run(_until_recorded_concluded(nats_url, [r.deliberation_id or "" for r in requests], timeout))


async def _until_recorded_concluded(nats_url: str, deliberation_ids: Sequence[str], timeout: float) -> None:
    """Until `get` says each concluded and the intake keeps none of them: a runner acks a
    request once its flow run has returned, so the flow runs' last writes stay out of the
    burst."""
    nc = await nats.connect(nats_url)
    try:
        give_up = time.monotonic() + timeout
        for deliberation_id in deliberation_ids:
            ref = json.dumps({"deliberation_id": deliberation_id}).encode()
            while not StatusReply.model_validate_json(
                (await nc.request("deliberation.get", ref, timeout=SUBMIT_TIMEOUT)).data
            ).status.concluded:
                if time.monotonic() > give_up:
                    raise RuntimeError(
                        f"warm-up: {deliberation_id} not recorded concluded in {timeout:.0f} s"
                    )
                await asyncio.sleep(0.2)
        while (await nc.jetstream().stream_info(INTAKE_STREAM)).state.messages:
            if time.monotonic() > give_up:
                raise RuntimeError(f"warm-up: the intake still holds requests after {timeout:.0f} s")
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


# -- what the streams hold --------------------------------------------------------------------
@dataclass
class Audit:
    concluded: int = 0
    lost: int = 0  # accepted, and no final event in the stream
    duplicated: int = 0  # final events beyond one per deliberation, agent events beyond one per agent
    disagreeing: int = 0  # the stream says something the stored result does not
    run_again: int = 0  # started more than once (delivered to a runner again)
    agent_events: int = 0
    # When each call's outcome was announced (its event's timestamp, epoch s), by
    # (deliberation id, call id); the ranking calls' by (id, "*.ranking"): the ranked event.
    announced_at: dict[tuple[str, str], float] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)  # the first few, for stderr


async def audit_streams(nats_url: str, deliberation_ids: Sequence[str]) -> Audit:
    """Read the event streams once and check every deliberation against its stored result,
    as the service's tests do (support/agreement.py)."""
    bus = await JetStreamBus.connect(bus_config_for(nats_url))
    try:
        by_deliberation: dict[str, list[Event]] = {}
        for event in await bus.read_events():
            by_deliberation.setdefault(event.deliberation_id, []).append(event)
        audit = Audit()
        for deliberation_id in deliberation_ids:
            events = by_deliberation.get(deliberation_id, [])
            await _audit_one(bus, deliberation_id, events, audit)
        return audit
    finally:
        await bus.close()


async def _audit_one(bus: JetStreamBus, deliberation_id: str, events: list[Event], audit: Audit) -> None:
    finals = [e for e in events if isinstance(e, DeliberationEvent)]
    agents = Counter(e.agent_id for e in events if isinstance(e, AgentResponseEvent))
    audit.agent_events += sum(agents.values())
    audit.duplicated += max(0, len(finals) - 1) + sum(n - 1 for n in agents.values())
    starts = [e for e in events if isinstance(e, DeliberationProgressEvent) and e.status == "started"]
    audit.run_again += int(len(starts) > 1 or any(e.attempt > 1 for e in starts))
    for event in events:
        if isinstance(event, AgentResponseEvent):
            audit.announced_at.setdefault((deliberation_id, event.agent_id), event.timestamp.timestamp())
        elif isinstance(event, RankedEvent):
            audit.announced_at.setdefault((deliberation_id, "*.ranking"), event.timestamp.timestamp())
    if not finals:
        audit.lost += 1
        audit.problems.append(f"{deliberation_id}: no final event ({len(events)} events)")
        return
    audit.concluded += 1
    audit.statuses[finals[0].status.value] += 1
    result = await bus.load_result(deliberation_id)
    try:
        assert result is not None, "no stored result"
        assert_events_agree_with_result(events, result)
    except AssertionError as exc:
        audit.disagreeing += 1
        audit.problems.append(f"{deliberation_id}: stream and result disagree: {str(exc)[:300]}")


def repeated_calls(requests: Sequence[dict[str, Any]], audit: Audit) -> tuple[int, int]:
    """Calls the model server was asked more than once, from its own log (the call id in
    `user`, the deliberation by the task the prompt states): the repeats, and of them those
    asked after the call had finished, i.e. after its outcome was announced."""
    arrivals: dict[tuple[str, str], list[float]] = {}
    for r in requests:
        deliberation_id = (r.get("task") or "").rsplit(" ", 1)[-1]
        arrivals.setdefault((deliberation_id, r["user"] or ""), []).append(r["arrived"])
    again = finished = 0
    for (deliberation_id, call_id), times in arrivals.items():
        times.sort()
        again += len(times) - 1
        stage = call_id.split(".", 1)[1] if "." in call_id else None
        announced = audit.announced_at.get((deliberation_id, f"*.{stage}" if stage else call_id))
        finished += sum(1 for t in times[1:] if announced is not None and t > announced)
    return again, finished


# -- processes: CPU and memory ------------------------------------------------------------------
RUNNERS = "runners"


def service_kinds(tree: dict[int, list[str]]) -> dict[int, str]:
    """Every process of the service, by what it belongs to: the child of this process it
    descends from says which (a runner, the Prefect server, PostgreSQL, nats-server); in a
    runner's tree, Ray's processes are told apart by their command lines. The emulator (the
    model server) and this process (the client) are not counted."""
    me = os.getpid()
    parts: dict[int, str | None] = {}
    kinds = {}
    for pid in tree:
        top = pid
        while top in tree and int(tree[top][1]) != me:
            top = int(tree[top][1])
        if top not in tree:
            continue  # this process, or one whose parent exited meanwhile
        if top not in parts:
            parts[top] = _part_of(command_line(top) or "")
        part = parts[top]
        if part == RUNNERS:
            inside = "service processes" if pid == top else process_kind(command_line(pid) or "") or "other"
            kinds[pid] = f"{RUNNERS}: {inside}"
        elif part is not None:
            kinds[pid] = part
    return kinds


def _part_of(cmdline: str) -> str | None:
    program = Path(cmdline.split(" ", 1)[0]).name
    if "-m flows.service" in cmdline:
        return RUNNERS
    if "prefect server start" in cmdline:
        return "prefect server"
    if program == "postgres":
        return "postgresql"
    if program == "nats-server":
        return "nats-server"
    return None


class MemoryPeaks:
    """The peak RSS and PSS of each runner's process tree (its Ray included) and of the
    machine's used memory (MemTotal - MemAvailable), sampled on a thread of its own while
    the block runs."""

    def __init__(self, runners: Sequence[RunnerProcess]) -> None:
        self._runners = runners
        self.runner_rss = self.runner_pss = 0
        self.machine_before = machine_used_bytes()
        self.machine = self.machine_before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(MEMORY_SAMPLE_SECONDS):
            for runner in self._runners:
                rss, pss = tree_memory_bytes(runner.pid)
                self.runner_rss, self.runner_pss = max(self.runner_rss, rss), max(self.runner_pss, pss)
            self.machine = max(self.machine, machine_used_bytes())

    def __enter__(self) -> MemoryPeaks:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()


def machine_used_bytes() -> int:
    fields = {
        line.split(":")[0]: int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
    }
    return fields["MemTotal"] - fields["MemAvailable"]


# Prefect's log lines: "12:00:00.000 | WARNING | deliberation - ..."; Python's own: "Traceback".
LOG_PROBLEM = re.compile(r"\| (WARNING|ERROR|CRITICAL) +\||^Traceback")


# flows/service/runner.py's report, every 10 s in which it ran deliberations.
LOOP_LAG = re.compile(r"event loop lag, last \d+ s, .*: p50 [\d.]+ ms, p99 ([\d.]+) ms, max (\d+) ms")


def loop_lag(runners: Sequence[RunnerProcess]) -> tuple[float, float]:
    """The runners' event loop lag (ms): the worst window's p99, and the max; 0 if none
    was reported."""
    windows = [
        (float(found.group(1)), float(found.group(2)))
        for runner in runners
        for found in LOOP_LAG.finditer(runner.log.read_text(errors="replace"))
    ]
    return max((p99 for p99, _ in windows), default=0.0), max((most for _, most in windows), default=0.0)


def log_problems(runners: Sequence[RunnerProcess]) -> list[str]:
    """The runners' log lines at WARNING or above, and tracebacks."""
    return [
        line
        for runner in runners
        for line in runner.log.read_text(errors="replace").splitlines()
        if LOG_PROBLEM.search(line)
    ]


# -- one database's figures ------------------------------------------------------------------
@dataclass
class Measured:
    burst: Burst
    audit: Audit
    stats: dict[str, Any]  # the emulator's
    cpu: dict[str, float]  # CPU seconds over the burst, by kind of process
    memory: MemoryPeaks
    log_lines: list[str]
    task_runs: TaskRuns
    dropped: int  # events the Prefect server dropped, its log says (dropped_events)
    lag: tuple[float, float]  # the runners' event loop lag, ms: worst window's p99, max


@dataclass
class TaskRuns:
    """Task runs the Prefect API holds for the burst's calls: as the last deliberation
    concluded, and once the count stopped growing (the server records them from events)."""

    at_end: int
    settled: int
    completed: int
    settled_after: float  # s after the last final event


def dropped_events(log: str) -> int:
    """Events the Prefect server's log says it dropped."""
    many = sum(int(a or b) for a, b in DROPPED_MANY.findall(log))
    return len(DROPPED_ONE.findall(log)) + many


def task_run_count(api_url: str, completed: bool = False) -> int:
    body = {"task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}} if completed else {}
    # Right after a database restart the server can answer 500 once per stale pooled
    # connection; a count is asked again rather than read from the error.
    retry_on = (429, 500, 503)
    return int(api({"PREFECT_API_URL": api_url}, "POST", "/task_runs/count", body, retry_on=retry_on))


def settled_task_runs(api_url: str, before: int, before_completed: int, patience: float = 180.0) -> TaskRuns:
    """The burst's task runs (those beyond `before`), counted at once and then every 5 s
    until two counts agree (at most `patience` s)."""
    started = time.monotonic()
    at_end = last = task_run_count(api_url) - before
    while time.monotonic() - started < patience:
        time.sleep(5)
        now = task_run_count(api_url) - before
        if now == last:
            break
        last = now
    completed = task_run_count(api_url, completed=True) - before_completed
    return TaskRuns(at_end, last, completed, time.monotonic() - started)


def measure(database: str, emulator: EmulatorProcess, args: argparse.Namespace, workdir: Path) -> Measured:
    with running_service(
        database,
        emulator.url,
        args.runners,
        args.concurrency,
        workdir,
        args.front,
        args.redis,
        args.server_prefect,
    ) as service:
        warm_up(service.nats_url, args.warmup)
        emulator.reset()
        api_url = service.prefect.api_url
        warmed = settled_task_runs(api_url, 0, 0)  # the warm-up's, once all are in
        runs_before, completed_before = warmed.settled, warmed.completed
        before: CpuSnapshot = cpu_snapshot(service_kinds)
        with (
            MemoryPeaks(service.runners) as memory,
            profiled(service, args.profile, database),
            # A runner, never the front.
            fault_after(args.kill_runner, service.runners[-1].kill),
            fault_after(args.restart_nats, lambda: service.nats.restart(down_for=NATS_DOWN_SECONDS)),
            fault_after(args.restart_prefect, lambda: service.prefect.restart(down_for=PREFECT_DOWN_SECONDS)),
            fault_after(args.restart_postgres, lambda: service.postgres_restart(args.postgres_down)),
        ):
            requests = burst_requests(args.count)
            burst = asyncio.run(
                run_burst(service.nats_url, requests, args.timeout, args.probes, service.grpc_address)
            )
        cpu = cpu_since(before, service_kinds)
        stats = emulator.stats()
        task_runs = settled_task_runs(api_url, runs_before, completed_before)
        dropped = dropped_events(service.prefect.log_path.read_text(errors="replace"))
        audit = asyncio.run(audit_streams(service.nats_url, burst.accepted))
        if args.profile is not None:
            calls = sum(1 for r in stats["requests"] if r["finished"])
            for path in sorted((args.profile / database).glob("*.txt")):
                print_profile(f"{database}: {path.stem}", top_items(path), calls)
        lag = loop_lag(service.runners)
        return Measured(
            burst, audit, stats, cpu, memory, log_problems(service.runners), task_runs, dropped, lag
        )


NATS_DOWN_SECONDS = 5.0  # --restart-nats: how long nats-server is away
PREFECT_DOWN_SECONDS = 10.0  # --restart-prefect: how long the Prefect server is away
POSTGRES_DOWN_SECONDS = 5.0  # --restart-postgres: how long PostgreSQL is away, by default


@contextmanager
def fault_after(after: float | None, fault: Callable[[], Any]) -> Iterator[None]:
    """`fault()` (a runner's process group SIGKILLed, nats-server restarted) `after` s into
    the block, if it is still in it; None: no fault. The thread that runs it lives on until
    the benchmark ends: a server it starts again dies with the thread that started it (our
    processes are started with PR_SET_PDEATHSIG, which follows the thread, not the process)."""
    if after is None:
        yield
        return
    ended = threading.Event()

    def run() -> None:
        if not ended.wait(after):
            fault()
            threading.Event().wait()

    threading.Thread(target=run, daemon=True, name="fault").start()
    try:
        yield
    finally:
        ended.set()


def profiled(service: Service, out_dir: Path | None, database: str) -> AbstractContextManager[None]:
    """py-spy on each runner's tree and on the Prefect server, with --profile."""
    if out_dir is None:
        return nullcontext()
    pids = {f"runner-{i + 1}": runner.pid for i, runner in enumerate(service.runners)}
    if service.prefect.pid is not None:
        pids["prefect-server"] = service.prefect.pid
    return profiling(pids, out_dir / database)


def figures(m: Measured, count: int) -> list[Figure]:
    answered = [s for s in m.burst.submitted if s.error is None and s.seconds is not None]
    latencies = [s.seconds * 1000 for s in answered if not s.probe and s.seconds is not None]
    probed = [s.seconds * 1000 for s in answered if s.probe and s.via == "nats" and s.seconds is not None]
    over_grpc = [s.seconds * 1000 for s in answered if s.probe and s.via == "grpc" and s.seconds is not None]
    calls = [r for r in m.stats["requests"] if r["finished"]]
    window = max(r["finished"] for r in calls) - min(r["arrived"] for r in calls) if calls else 0.0
    ends = m.burst.concluded_at.values()
    wall = max(ends) - m.burst.sent_at if ends else 0.0
    cpu_ms = {kind: seconds * 1000 / max(1, len(calls)) for kind, seconds in sorted(m.cpu.items())}
    again, finished_again = repeated_calls(m.stats["requests"], m.audit)
    mib = 2**20
    return [
        Figure(
            "submit reply, all at once: p50",
            [statistics.median(latencies)] if latencies else [],
            "ms",
            "the burst's submits, sent together",
        ),
        Figure(
            "submit reply, all at once: p99", [percentile(latencies, 0.99)] if latencies else [], "ms", ""
        ),
        Figure(
            "submit reply, runners busy: p50",
            [statistics.median(probed)] if probed else [],
            "ms",
            f"--probes, one at a time from {PROBE_AFTER:g} s on; target <= 20 ms",
        ),
        Figure(
            "submit reply, runners busy: p99",
            [percentile(probed, 0.99)] if probed else [],
            "ms",
            "target <= 50 ms",
        ),
        Figure(
            "submit reply, runners busy, gRPC: p50",
            [statistics.median(over_grpc)] if over_grpc else [],
            "ms",
            "every other probe, by the fleet API (--front); target <= 2x NATS's",
        ),
        Figure(
            "submit reply, runners busy, gRPC: p99",
            [percentile(over_grpc, 0.99)] if over_grpc else [],
            "ms",
            "",
        ),
        Figure(
            "submit errors",
            [len(m.burst.submitted) - len(answered)],
            "",
            f"error reply or none in {SUBMIT_TIMEOUT:g} s",
        ),
        Figure("concluded", [m.audit.concluded], "", f"of {count}: accepted, a final event in the stream"),
        Figure("  of which completed", [m.audit.statuses["completed"]], "", "quorum met"),
        Figure("lost", [m.audit.lost], "", "accepted, no final event by the timeout; target 0"),
        Figure(
            "duplicated",
            [m.audit.duplicated],
            "events",
            "final > 1 per deliberation, agent > 1 per agent; target 0",
        ),
        Figure(
            "stream disagrees with result",
            [m.audit.disagreeing],
            "",
            "support/agreement.py's check; target 0",
        ),
        Figure("run more than once", [m.audit.run_again], "", "started again: delivered to a runner again"),
        Figure("calls asked again", [again], "", "the model server's log: a call id of a deliberation twice"),
        Figure(
            "  of which finished before",
            [finished_again],
            "",
            "asked again after its outcome was announced; target 0",
        ),
        Figure(
            "final events a subscriber saw twice",
            [sum(n - 1 for n in m.burst.finals_seen.values())],
            "",
            "a plain subscription on the final subjects; target 0",
        ),
        Figure(
            "get behind the final event",
            [m.burst.get_behind],
            "",
            "`get` asked on the final event answered not concluded; target 0",
        ),
        Figure("agent events", [m.audit.agent_events], "", f"{count} x 5 expected: one per agent"),
        Figure(
            "proposal calls at the model server",
            [len(proposal_requests(m.stats))],
            "",
            "more: a call asked again",
        ),
        Figure(
            "task runs in the Prefect API, at the end",
            [m.task_runs.at_end],
            "",
            "as the last final event arrived; target: one per call",
        ),
        Figure(
            "task runs in the Prefect API, settled",
            [m.task_runs.settled],
            "",
            f"{m.task_runs.settled_after:.0f} s later; of them Completed: {m.task_runs.completed}",
        ),
        Figure(
            "events the Prefect server dropped",
            [m.dropped],
            "",
            "its log: full queues, no retries left; target 0",
        ),
        Figure("burst wall time", [wall], "s", "first submit to last final event"),
        Figure(
            "model calls sustained",
            [len(calls) / window] if window else [],
            "/s",
            "calls / (last finish - first arrival); target >= 50/s",
        ),
        Figure("model calls", [len(calls)], "", f"{count} x 5 agents: proposals and ranking"),
        Figure(
            "max calls in flight at the model server",
            [m.stats["max_running"]],
            "",
            f"max_num_seqs {MAX_NUM_SEQS}",
        ),
        Figure(
            "CPU per model call", [sum(cpu_ms.values())], "ms", "every process of the service, over the burst"
        ),
        *(Figure(f"  of which {kind}", [ms], "ms", "per model call") for kind, ms in cpu_ms.items()),
        Figure(
            "peak memory of one runner, RSS",
            [m.memory.runner_rss / mib],
            "MiB",
            "the larger runner's tree, its Ray included",
        ),
        Figure(
            "peak memory of one runner, PSS", [m.memory.runner_pss / mib], "MiB", "shared pages counted once"
        ),
        Figure(
            "machine memory used, peak",
            [m.memory.machine / mib],
            "MiB",
            "MemTotal - MemAvailable, during the burst",
        ),
        Figure(
            "machine memory used, before",
            [m.memory.machine_before / mib],
            "MiB",
            "the same, as the burst began",
        ),
        Figure(
            "runners' event loop lag, p99",
            [m.lag[0]],
            "ms",
            "the worst 10 s window's; the loop that talks to NATS",
        ),
        Figure("runners' event loop lag, max", [m.lag[1]], "ms", "a wake-up due every 100 ms, this late"),
        Figure("runner log lines, WARNING and above", [len(m.log_lines)], "", "and tracebacks; see stderr"),
    ]


def print_side_by_side(measured: dict[str, list[Figure]], title: str) -> None:
    """One row per figure, one column per database (in the order measured)."""
    names = list(dict.fromkeys(f.name for figures in measured.values() for f in figures))
    by_name = {(database, f.name): f for database, figures in measured.items() for f in figures}
    first = {f.name: f for figures in reversed(measured.values()) for f in figures}
    rows = [["figure", *measured, "unit", "note"]]
    for name in names:
        cells = [_cell(by_name.get((database, name))) for database in measured]
        rows.append([name, *cells, first[name].unit, first[name].note])
    print(title)
    print_rows(rows)


def _cell(figure: Figure | None) -> str:
    if figure is None or not figure.values:
        return "–"
    value = figure.values[0]
    return f"{value:,.0f}" if abs(value) >= 1000 or float(value).is_integer() else f"{value:.3g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.service_burst", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--count", type=int, default=100, help="deliberations submitted in the burst")
    parser.add_argument(
        "--probes",
        type=int,
        default=None,
        help="of them, how many are submitted one at a time once the runners are busy "
        "(default: 20, at most a fifth of --count)",
    )
    parser.add_argument(
        "--database", choices=[*DATABASES, "both"], default="both", help="the Prefect server's"
    )
    parser.add_argument("--runners", type=int, default=2, help="`python -m flows.service` processes")
    parser.add_argument(
        "--concurrency", type=int, default=50, help="DELIBERATION_SERVICE_CONCURRENCY of each runner"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="deliberations before the burst (default: one per runner)"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="s after the submits to wait for the last to conclude"
    )
    parser.add_argument(
        "--front",
        action="store_true",
        help="a front process of its own answers the endpoints (DELIBERATION_SERVICE_ROLE=front); "
        "the runners only run",
    )
    parser.add_argument("--logs", type=Path, default=None, help="keep the runners' logs in this directory")
    parser.add_argument(
        "--kill-runner",
        type=float,
        default=None,
        metavar="SECONDS",
        help="SIGKILL a runner (its process group) this long after the first submit",
    )
    parser.add_argument(
        "--restart-nats",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"restart nats-server (away {NATS_DOWN_SECONDS:.0f} s, its JetStream state kept) this long "
        "after the first submit",
    )
    parser.add_argument(
        "--redis",
        action="store_true",
        help="the Prefect server's events through a Redis of its own (prefect-redis), not its "
        "in-memory messaging",
    )
    parser.add_argument(
        "--server-prefect",
        default=None,
        metavar="PATH",
        help="run the Prefect server with this `prefect` command (another environment's, its own "
        "Python: say one on Python 3.13, where Prefect's timestamps are the standard library's, "
        "not pendulum's); the same Prefect version",
    )
    parser.add_argument(
        "--restart-prefect",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"restart the Prefect server (away {PREFECT_DOWN_SECONDS:.0f} s) this long after the "
        "first submit",
    )
    parser.add_argument(
        "--restart-postgres",
        type=float,
        default=None,
        metavar="SECONDS",
        help="restart PostgreSQL (away --postgres-down s, its data kept) this long after the first submit",
    )
    parser.add_argument(
        "--postgres-down",
        type=float,
        default=POSTGRES_DOWN_SECONDS,
        metavar="SECONDS",
        help=f"with --restart-postgres: how long it is away (default: {POSTGRES_DOWN_SECONDS:g})",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy the runners and the Prefect server during the burst into this directory "
        "(flame graphs and top items; its CPU figures are then not the service's alone)",
    )
    args = parser.parse_args(argv)
    if args.probes is None:
        args.probes = min(20, args.count // 5)
    if not 0 <= args.probes <= args.count:
        parser.error(f"--probes must be between 0 and --count ({args.count})")
    if args.warmup is None:
        args.warmup = args.runners
    databases = list(DATABASES) if args.database == "both" else [args.database]
    try:
        if "postgresql" in databases:
            postgres_bin_dir()  # before anything starts: say at once that it is missing
        measured = run_all(databases, args)
    except ConfigurationError as exc:
        print(f"service_burst: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("service_burst: interrupted; what it started is stopped", file=sys.stderr)
        return 130
    title = (
        f"# deliberation service burst: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"{args.count} x 5 agents, {args.runners} runners x {args.concurrency}"
        f"{' and a front of its own' if args.front else ''}, "
        f"{CALL_SECONDS:g} s calls, max_num_seqs {MAX_NUM_SEQS}"
    )
    print_side_by_side(measured, title)
    return 0


def run_all(databases: Sequence[str], args: argparse.Namespace) -> dict[str, list[Figure]]:
    """Each database's figures, one after the other on one emulator; everything started is
    stopped on the way out, Ctrl-C included."""
    per_token = (CALL_SECONDS - TTFT) / OUTPUT_TOKENS
    with ExitStack() as stack:
        if args.logs is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-burst-")))
        else:
            workdir = args.logs
            workdir.mkdir(parents=True, exist_ok=True)
        emulator = EmulatorProcess(MAX_NUM_SEQS, TTFT, per_token, OUTPUT_TOKENS)
        stack.callback(emulator.stop)
        measured = {}
        for database in databases:
            m = measure(database, emulator, args, workdir)
            report_problems(database, m)
            measured[database] = figures(m, args.count)
        return measured


def report_problems(database: str, m: Measured) -> None:
    """On stderr, what the figures only count: submit errors, deliberations lost or
    disagreeing, and the runners' warnings (the first few of each, distinct)."""
    errors = [f"{s.deliberation_id}: {s.error}" for s in m.burst.submitted if s.error]
    for what, lines in (("submit", errors), ("streams", m.audit.problems), ("runner logs", m.log_lines)):
        distinct = list(dict.fromkeys(lines))
        for line in distinct[:5]:
            print(f"{database}: {what}: {line[:400]}", file=sys.stderr)
        if len(distinct) > 5:
            print(f"{database}: {what}: ... {len(distinct) - 5} more distinct", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())

"""Embedded defaults for a local run: start whatever is not configured.

- NATS_URL unset: a nats-server with JetStream, its state under DELIBERATION_STATE_DIR
  (so `python -m flows.result ID` finds a local run's result afterwards).
- VLLM_URL unset: the local CPU model server (the `local` extra).
- PREFECT_API_URL unset: one temporary Prefect API on the default database, shared by
  the flow and every Ray worker. Prefect's own ephemeral mode would start one server per
  Ray worker; this one reaches the workers through the task context Prefect serializes.
  Runs stay in the database, so `prefect server start` shows them afterwards.
Everything started here is stopped on exit, Ctrl-C or error.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect.logging import get_logger
from prefect.logging.handlers import APILogWorker
from prefect.settings import (
    PREFECT_API_SSL_CERT_FILE,
    PREFECT_API_URL,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    temporary_settings,
)

from agents.embedded import LocalModelServer, LocalNatsServer
from agents.errors import ConfigurationError
from agents.settings import Settings
from flows.hosts import HostedRayTaskRunner
from flows.temporary_api import TemporaryPrefectAPI

log = get_logger("deliberation")


@contextmanager
def local_nats(settings: Settings) -> Iterator[str | None]:
    """Start nats-server on the local state directory unless NATS_URL is set; yields the
    URL it started (None if nothing was started)."""
    if settings.nats_url is not None:
        yield None
        return
    with LocalNatsServer(store_dir=settings.state_dir / "jetstream") as nats:
        log.info("started nats-server at %s (JetStream state in %s)", nats.url, nats.store_dir)
        if not nats.persistent:
            log.warning(
                "another local run holds %s: this run's events and result last only while it runs",
                settings.state_dir,
            )
        yield nats.url


@contextmanager
def embedded_servers(settings: Settings) -> Iterator[Settings]:
    """Yield settings that point at a configured or a freshly started NATS and model server."""
    with ExitStack() as stack:
        started: dict[str, str] = {}
        nats_url = stack.enter_context(local_nats(settings))
        if nats_url is not None:
            started["NATS_URL"] = nats_url
        if settings.vllm_url is None:
            model = stack.enter_context(LocalModelServer())
            started["VLLM_URL"] = model.url
            log.info("started the local model server at %s (logs: %s)", model.url, model.log_path)
        # Local Ray workers inherit the environment of the process that starts Ray.
        os.environ.update(started)
        yield Settings()


@contextmanager
def prefect_api(while_starting: Callable[[], Any] | None = None) -> Iterator[None]:
    """Use PREFECT_API_URL if set (by the environment or the active profile); else one
    temporary API for this process and its Ray workers. `while_starting` runs while the
    API comes up (about 10 s here, mostly in its own process, importing Prefect's server)."""
    if PREFECT_API_URL.value():
        if while_starting is not None:
            while_starting()
        yield
        return
    api = TemporaryPrefectAPI()
    with ExitStack() as stack:
        stack.callback(api.stop)
        api.launch()
        if while_starting is not None:
            while_starting()
        api.wait_until_ready()
        log.info("started a temporary Prefect API at %s (logs: %s)", api.api_url, api.log_path)
        ca_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="deliberation-ca-"))
        stack.enter_context(
            temporary_settings(
                {
                    PREFECT_API_URL: api.api_url,
                    PREFECT_API_SSL_CERT_FILE: untrusting_ca_file(Path(ca_dir)),
                    # Heartbeats feed a server's zombie-run automations; this API ends with
                    # the process, so none would read them. And Prefect's heartbeat thread
                    # sleeps in 1 s steps that each sync flow run waits out at its end
                    # (about 0.5 s on average, measured in BENCHMARKS.md; the loop came
                    # with PrefectHQ/prefect#19641). Only a setting of None turns it off,
                    # which no environment variable can say.
                    PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
                }
            )
        )
        try:
            yield
        finally:
            # Send buffered run logs while the API is still there to receive them.
            APILogWorker.drain_all(timeout=5)


def untrusting_ca_file(directory: Path) -> str:
    """A CA file holding one self-signed certificate whose key is thrown away: TLS verified
    against it trusts no server.

    Why: every Prefect client builds an SSL context from its CA file, certifi's 140-odd
    roots by default, about 45 ms of CPU each time, and a task run on Ray creates several
    clients. The temporary API speaks plain HTTP on 127.0.0.1 to workers on this machine,
    so no certificate is ever checked; loading one instead of the bundle took a third off
    the Ray workers' CPU per deliberation (BENCHMARKS.md). Trusting nothing, rather than
    skipping verification, keeps any TLS connection made with it failing closed."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "deliberation: trusts nothing")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / "untrusting-ca.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return str(path)


@contextmanager
def local_ray(settings: Settings) -> Iterator[Callable[[], None]]:
    """Yields a function that starts Ray (or connects to RAY_ADDRESS) once; Ray is shut
    down on exit. Started here rather than by the task runner, it is started once per
    process, not once per flow-run attempt, and can start while the Prefect API does."""
    import ray

    def start() -> None:
        if ray.is_initialized():
            return
        for attempt in range(1, RAY_CONNECT_ATTEMPTS + 1):
            try:
                init_ray(settings.ray_address)
                return
            except (ConnectionError, RuntimeError) as exc:
                if settings.ray_address is None:
                    raise
                # Ray Client's head starts a server per connection, and on a busy head that
                # start sometimes fails ("Starting Ray client server failed", seen once in
                # ten test runs on 2 cores); a second connection usually gets one.
                if "client server failed" in str(exc) and attempt < RAY_CONNECT_ATTEMPTS:
                    log.warning("Ray at %s: %s; connecting again", settings.ray_address, exc)
                    continue
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ConfigurationError(
                    f"cannot connect to Ray at {settings.ray_address}: {reason}; check RAY_ADDRESS "
                    "(or --ray-address)"
                ) from None

    try:
        yield start
    finally:
        if ray.is_initialized():
            ray.shutdown()


RAY_CONNECT_ATTEMPTS = 2


# Agent tasks request a fraction of a CPU, so a stage runs more tasks at once than Ray
# keeps idle workers for (one per CPU by default): every stage then started new worker
# processes, each importing Prefect again, seconds per stage (BENCHMARKS.md). Keeping
# the workers a deliberation needs alive between stages removes that. No worker is
# started before a task asks for one: model calls run on call hosts (actors), and an idle
# worker prestarted for the driver was 85 MB of a local run that never used it.
RAY_SYSTEM_CONFIG = {
    "num_workers_soft_limit": 64,
    "idle_worker_killing_time_threshold_ms": 600_000,
    "prestart_worker_first_driver": False,
}


def init_ray(address: str | None, **options: Any) -> None:
    """`ray.init` for agent tasks: connect to the cluster at `address`, or start a local
    instance without the daemons a single machine does not use (see
    `without_cluster_daemons`). `options` go to ray.init (`num_cpus`, say)."""
    import ray

    kwargs = {"namespace": "prefect", **ray_init_kwargs(address), **options}
    if address is not None:
        ray.init(address=address, **kwargs)
        return
    with without_cluster_daemons():
        ray.init(**kwargs)


@contextmanager
def without_cluster_daemons() -> Iterator[None]:
    """While `ray.init` starts a local instance: no autoscaler monitor and no log monitor,
    some 175 MB of a local run's 1.2 GB (BENCHMARKS.md). One machine has nothing to
    autoscale, and with `log_to_driver` off nothing reads what the log monitor collects.
    `ray start` has a switch for each (--no-monitor, ray-project/ray#13505;
    --include-log-monitor, #48891); `ray.init` has neither, so the parameters it builds
    get those two defaults here, and only while it runs. Running `ray start --block` as a
    managed process instead was tried: on SIGTERM it drains for 30 s before it stops, and
    it writes an address file that any other `ray.init()` on the machine then joins."""
    from ray._private import parameter

    original = parameter.RayParams

    class SingleMachineRayParams(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("no_monitor", True)
            kwargs.setdefault("include_log_monitor", False)
            super().__init__(*args, **kwargs)

    parameter.RayParams = SingleMachineRayParams  # type: ignore[misc]
    try:
        yield
    finally:
        parameter.RayParams = original  # type: ignore[misc]


def ray_init_kwargs(address: str | None) -> dict[str, Any]:
    """What `ray.init` needs for agent tasks. A cluster's own settings stand when
    connecting to one (Ray refuses a system config then; deploy/ sets them on the
    cluster), and the cluster gets this checkout's code."""
    kwargs: dict[str, Any] = {"log_to_driver": False}  # worker output stays off our stdout
    if address is None:
        kwargs["_system_config"] = RAY_SYSTEM_CONFIG
        # The dashboard's head and its modules were over 1 GB of a local run's 2.2 GB
        # (BENCHMARKS.md); a cluster started with `ray start` keeps its own.
        kwargs["include_dashboard"] = False
    else:
        kwargs["runtime_env"] = shipped_code()
    return kwargs


def shipped_code() -> dict[str, Any]:
    """A Ray runtime env that uploads our packages to the cluster, where they shadow the
    image's copy: a change to the flow needs no new image. Third-party packages come
    from the image, so a dependency change does."""
    import agents
    import flows
    import tasks

    # Paths, not module objects: Ray Client pickles the runtime env, and modules do not pickle.
    packages = [str(Path(package.__file__).parent) for package in (agents, tasks, flows) if package.__file__]
    return {"py_modules": packages, "excludes": ["__pycache__", "*.pyc"]}


def task_runner(settings: Settings) -> HostedRayTaskRunner:
    return HostedRayTaskRunner(
        address=settings.ray_address, init_kwargs=ray_init_kwargs(settings.ray_address)
    )

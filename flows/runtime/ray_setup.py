"""Ray for agent tasks: a local instance without the daemons one machine does not use, or
a connection to the cluster at RAY_ADDRESS with this checkout's code shipped to it."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect.logging import get_logger

from agents.errors import ConfigurationError
from agents.settings import Settings

log = get_logger("deliberation")


@contextmanager
def local_ray(settings: Settings) -> Iterator[Callable[[], None]]:
    """Yields a function that starts Ray (or connects to RAY_ADDRESS) once; Ray is shut
    down on exit. The task runner would start the same Ray itself; started here, it can
    start while the Prefect API does."""
    import ray

    def start() -> None:
        if not ray.is_initialized():
            init_ray(settings.ray_address)

    try:
        yield start
    finally:
        if ray.is_initialized():
            ray.shutdown()


RAY_CONNECT_ATTEMPTS = 2
# No worker is started before a task asks for one: model calls run on call hosts (actors),
# and an idle worker prestarted for the driver was memory a local run never used.
RAY_SYSTEM_CONFIG = {"prestart_worker_first_driver": False}


def init_ray(address: str | None, **options: Any) -> None:
    """`ray.init` for agent tasks: connect to the cluster at `address` (an unreachable one
    is a ConfigurationError), or start a local instance without the daemons a single
    machine does not use (see `without_cluster_daemons`). `options` go to ray.init
    (`num_cpus`, say)."""
    import ray

    kwargs = {"namespace": "prefect", **ray_init_kwargs(address), **options}
    if address is None:
        with without_cluster_daemons(), keeping_sigterm_handler():
            ray.init(**kwargs)
        return
    for attempt in range(1, RAY_CONNECT_ATTEMPTS + 1):
        try:
            with keeping_sigterm_handler():
                ray.init(address=address, **kwargs)
            return
        except (ConnectionError, RuntimeError) as exc:
            # Ray Client's head starts a server per connection, and on a busy head that
            # start sometimes fails ("Starting Ray client server failed", or the proxy's
            # 30 s wait for its channel runs out); a second connection usually gets one.
            if _server_side(exc) and attempt < RAY_CONNECT_ATTEMPTS:
                log.warning("Ray at %s: %s; connecting again", address, _reason(exc))
                continue
            raise ConfigurationError(
                f"cannot connect to Ray at {address}: {_reason(exc)}; check RAY_ADDRESS (or --ray-address)"
            ) from None


def _server_side(exc: BaseException) -> bool:
    """The head answered, but could not start this connection's server."""
    return "Initialization failure from server" in str(exc) or "client server failed" in str(exc)


def _reason(exc: BaseException) -> str:
    """One line: the head's own reason (the last line of the traceback it sends back) for a
    failure on its side, else the error's first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[-1] if _server_side(exc) else lines[0]


@contextmanager
def keeping_sigterm_handler() -> Iterator[None]:
    """`ray.init` in the main thread replaces the SIGTERM handler with `sys.exit`. In a
    flow run that handler is Prefect's, which turns SIGTERM into TerminationSignal: a
    worker cancelling a deployment's flow run sends SIGTERM, and the flow, seeing it,
    concludes the deliberation cancelled (flows/futures.py). Under Ray's handler it died
    Crashed instead, its deliberation never concluded. Without a handler of Python's
    own (SIG_DFL), Ray's stays: it still runs the atexit shutdown."""
    previous = (
        signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        yield
    finally:
        if callable(previous):
            signal.signal(signal.SIGTERM, previous)


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

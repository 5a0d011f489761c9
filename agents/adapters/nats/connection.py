"""Connecting to NATS: one clear error if the first connect fails, then reconnects for as
long as the server takes to come back."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import AuthorizationError
from nats.errors import Error as NatsError

from agents.adapters.llm import redact_url
from agents.config import BusConfig
from agents.errors import BusUnreachable, EventBusError

log = logging.getLogger(__name__)

# The first connect is tried twice (max_reconnect_attempts=1) with a pause between, each
# step of an attempt bounded by connect_timeout: three of them let both attempts run.
CONNECT_TIMEOUTS = 3


def longest_connect(config: BusConfig) -> float:
    """How long `open_connection` may wait for the server before giving up."""
    return config.connect_timeout * CONNECT_TIMEOUTS


def _tls_context(config: BusConfig) -> ssl.SSLContext | None:
    """TLS for tls:// URLs or when certificates are given: the system's CAs unless a CA
    file is named; a client certificate for servers that verify clients."""
    wants_tls = config.url.startswith("tls://") or config.tls_ca_file or config.tls_cert_file
    if not wants_tls:
        return None
    try:
        context = ssl.create_default_context(cafile=str(config.tls_ca_file) if config.tls_ca_file else None)
        if config.tls_cert_file is not None:
            context.load_cert_chain(
                str(config.tls_cert_file), str(config.tls_key_file) if config.tls_key_file else None
            )
    except (OSError, ssl.SSLError) as exc:
        raise EventBusError(f"cannot load the NATS TLS files: {exc}") from None
    return context


async def open_connection(config: BusConfig) -> NATS:
    """A connected client. Raises EventBusError if NATS cannot be reached within
    `longest_connect`; after that, lost connections are retried."""
    nc = NATS()
    where = redact_url(config.url)
    connected = asyncio.Event()
    first_errors: list[Exception] = []

    async def report(exc: Exception) -> None:
        # Before the first connection the caller gets one clear error instead, naming
        # the cause nats-py only reports here (say, an authorization violation).
        if not connected.is_set():
            first_errors.append(exc)
        log.log(logging.WARNING if connected.is_set() else logging.DEBUG, "NATS: %s", exc)

    options: dict[str, Any] = {
        "servers": [config.url],
        "connect_timeout": config.connect_timeout,
        "allow_reconnect": True,
        # nats-py retries a first connect forever when reconnects are unlimited.
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.5,
        "error_cb": report,
    }
    if config.token is not None:
        options["token"] = config.token.get_secret_value()
    if config.creds_file is not None:
        options["user_credentials"] = str(config.creds_file)
    tls = _tls_context(config)
    if tls is not None:
        options["tls"] = tls
    try:
        await asyncio.wait_for(nc.connect(**options), timeout=longest_connect(config))
    except (TimeoutError, OSError, NatsError) as exc:
        await nc.close()
        cause = first_errors[-1] if first_errors else exc
        # A refused authorization is decided; it may also show as the reset that follows
        # it (test_bus), which reads as unreachable: retried, then refused again.
        refused = isinstance(cause, AuthorizationError) or "Authorization Violation" in str(cause)
        raise (EventBusError if refused else BusUnreachable)(
            f"cannot reach NATS at {where}: {type(cause).__name__} {cause}; "
            "check NATS_URL and its credentials, and that nats-server runs with -js"
        ) from None
    connected.set()
    # Once connected, ride out server restarts: reconnect for as long as it takes.
    nc.options["max_reconnect_attempts"] = -1
    return nc

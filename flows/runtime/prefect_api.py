"""The Prefect API of a run: PREFECT_API_URL if set (by the environment or the active
profile); else one temporary API on the default database, shared by the flow and every Ray
worker. Prefect's own ephemeral mode would start one server per Ray worker; this one reaches
the workers through the task context Prefect serializes. Runs stay in the database, so
`prefect server start` shows them afterwards."""

from __future__ import annotations

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
    PREFECT_CLIENT_CSRF_SUPPORT_ENABLED,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    temporary_settings,
)

from flows.runtime.temporary_api import TemporaryPrefectAPI

log = get_logger("deliberation")


@contextmanager
def prefect_api(while_starting: Callable[[], Any] | None = None) -> Iterator[None]:
    """Use PREFECT_API_URL if set (by the environment or the active profile); else one
    temporary API for this process and its Ray workers. `while_starting` runs while the
    API comes up (seconds, mostly in its own process, importing Prefect's server)."""
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
                    # (BENCHMARKS.md; the loop came with PrefectHQ/prefect#19641). Only a
                    # setting of None turns it off, which no environment variable can say.
                    PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
                    # Each new client asks a server for a CSRF token before its first
                    # change, and this one, protecting nothing, refuses: a wasted round
                    # trip for every client a run makes (two per deliberation).
                    PREFECT_CLIENT_CSRF_SUPPORT_ENABLED: api.csrf_protected,
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

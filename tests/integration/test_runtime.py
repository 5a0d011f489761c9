"""flows.runtime.prefect_api's CA file for the temporary Prefect API: cheap to load, and trusting no
server, so a TLS connection made with it fails closed (checked against a real TLS server)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from flows.runtime.prefect_api import untrusting_ca_file
from tests.certificates import Certificates, make_certificates


@contextmanager
def tls_server(certs: Certificates) -> Iterator[int]:
    """A TLS server on 127.0.0.1 that completes handshakes until closed; yields its port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert, certs.key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(connection, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass  # the client refused our certificate

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()


def handshake(port: int, cafile: str) -> None:
    context = ssl.create_default_context(cafile=cafile)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        pass


def test_the_untrusting_ca_file_holds_one_ca_and_trusts_no_server(tmp_path: Path) -> None:
    cafile = untrusting_ca_file(tmp_path)
    assert ssl.create_default_context(cafile=cafile).cert_store_stats()["x509_ca"] == 1
    certs = make_certificates(tmp_path)
    with tls_server(certs) as port:
        handshake(port, str(certs.ca))  # the server is fine: its own CA accepts it
        with pytest.raises(ssl.SSLCertVerificationError, match="CERTIFICATE_VERIFY_FAILED"):
            handshake(port, cafile)
    # A fresh key each time: no two runs share a CA.
    other = tmp_path / "other"
    other.mkdir()
    assert Path(cafile).read_bytes() != Path(untrusting_ca_file(other)).read_bytes()

"""Prefect's clients share their TLS contexts (flows/runtime/prefect_tls.py)."""

from __future__ import annotations

import ssl
from typing import Any

import prefect.client.orchestration as orchestration
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_TLS_INSECURE_SKIP_VERIFY, PREFECT_API_URL, temporary_settings

from flows.runtime.prefect_tls import SharedContexts, share_prefect_tls_contexts

API = "https://prefect.example.invalid/api"  # never reached: clients are only made


def tls_context(client: Any) -> ssl.SSLContext:
    """The context a Prefect client's httpx transport opens its connections with."""
    return client._client._transport._pool._ssl_context


def test_every_prefect_client_of_the_process_shares_one_verified_context() -> None:
    share_prefect_tls_contexts()
    share_prefect_tls_contexts()  # a second call changes nothing
    assert isinstance(orchestration.ssl, SharedContexts)
    with temporary_settings({PREFECT_API_URL: API}):
        clients = [get_client(), get_client(), get_client(sync_client=True), get_client(sync_client=True)]
    contexts = {id(tls_context(client)) for client in clients}
    assert len(contexts) == 1
    context = tls_context(clients[0])
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 0  # the CA bundle is in it


def test_an_unverified_client_gets_a_context_of_its_own_and_the_verified_ones_stay_verified() -> None:
    share_prefect_tls_contexts()
    with temporary_settings({PREFECT_API_URL: API}):
        verified = tls_context(get_client())
        with temporary_settings({PREFECT_API_TLS_INSECURE_SKIP_VERIFY: True}):
            unverified = [tls_context(get_client()), tls_context(get_client(sync_client=True))]
        again = tls_context(get_client(sync_client=True))
    assert unverified[0] is unverified[1] and unverified[0] is not verified
    assert unverified[0].verify_mode is ssl.CERT_NONE
    assert again is verified and verified.verify_mode is ssl.CERT_REQUIRED


def test_contexts_are_shared_by_their_arguments() -> None:
    made: list[tuple[Any, ...]] = []

    class Module:
        Purpose = ssl.Purpose

        @staticmethod
        def create_default_context(purpose: Any, **kwargs: Any) -> object:
            made.append((purpose, kwargs))
            return object()

    shared = SharedContexts(Module)  # type: ignore[arg-type]
    a = shared.create_default_context(cafile="/a.pem")
    assert shared.create_default_context(cafile="/a.pem") is a
    assert shared.create_default_context(cafile="/b.pem") is not a
    assert shared.create_default_context() is not a
    assert len(made) == 3
    assert shared.Purpose is ssl.Purpose  # the rest of the module is the module's

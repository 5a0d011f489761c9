"""A NATS operator, account and user made here, signed with nkeys, for testing `.creds`
authentication against a real nats-server in operator mode (what `nsc` would produce)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys

from flows.runtime.embedded import LocalNatsServer


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _keypair(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def _jwt(issuer: nkeys.KeyPair, subject: str, name: str, nats: dict[str, Any]) -> str:
    claims: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    digest = hashlib.sha512(json.dumps(claims, separators=(",", ":")).encode()).digest()[:32]
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = _b64(issuer.sign(f"{header}.{body}".encode()))
    return f"{header}.{body}.{signature}"


class OperatorNatsServer(LocalNatsServer):
    """nats-server in operator mode: only users with a valid `.creds` file get in."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.setup = operator_setup(directory)

    def command(self) -> list[str]:
        return [*super().command(), "-c", str(self.setup.config)]


@dataclass(frozen=True)
class OperatorSetup:
    config: Path
    creds: Path
    user_seed: str
    user_jwt: str


def operator_setup(directory: Path) -> OperatorSetup:
    operator = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    account = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    system = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)  # JetStream needs a system account
    user = _keypair(nkeys.PREFIX_BYTE_USER)
    operator_jwt = _jwt(operator, operator.public_key.decode(), "test-operator", {"type": "operator"})
    unlimited = {"subs": -1, "data": -1, "payload": -1, "conn": -1, "leaf": -1, "imports": -1, "exports": -1}
    jetstream = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    account_jwt = _jwt(
        operator,
        account.public_key.decode(),
        "council",
        {"type": "account", "limits": {**unlimited, "wildcards": True, **jetstream}},
    )
    system_jwt = _jwt(operator, system.public_key.decode(), "SYS", {"type": "account", "limits": unlimited})
    user_jwt = _jwt(
        account, user.public_key.decode(), "flow", {"type": "user", "subs": -1, "data": -1, "payload": -1}
    )
    seed = user.seed.decode()
    creds = directory / "flow.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
    creds.chmod(0o600)
    config = directory / "nats.conf"
    config.write_text(
        f'operator: "{operator_jwt}"\n'
        f'system_account: "{system.public_key.decode()}"\n'
        "resolver: MEMORY\n"
        f'resolver_preload: {{ {account.public_key.decode()}: "{account_jwt}", '
        f'{system.public_key.decode()}: "{system_jwt}" }}\n'
    )
    return OperatorSetup(config=config, creds=creds, user_seed=seed, user_jwt=user_jwt)

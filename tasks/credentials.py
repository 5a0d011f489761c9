"""Secrets, from Prefect Secret blocks or environment variables, resolved in the process
that uses them: they never travel as task or flow parameters, so they never reach the
Prefect API's run records, logs or events."""

from __future__ import annotations

import os
from typing import cast

from prefect.blocks.system import Secret
from pydantic import SecretStr

from agents.errors import ConfigurationError
from agents.settings import Settings


def _secret_block(name: str) -> str:
    try:
        # _sync: the blocking form, also from a thread the async task hands this to
        # (Prefect would otherwise see the copied async context and return a coroutine).
        value = cast(Secret[str], Secret.load(name, _sync=True)).get()
    except ValueError:
        raise ConfigurationError(f"no Prefect Secret block named {name!r}; create it or unset it") from None
    return str(value)


def model_api_key(secret_block: str | None, env_variable: str | None) -> str | None:
    """The bearer key for the model server: its Secret block if named, else the variable."""
    if secret_block:
        return _secret_block(secret_block)
    return os.environ.get(env_variable) if env_variable else None


def nats_token(settings: Settings) -> SecretStr | None:
    """The NATS token from its Secret block, if one is named (else settings keep NATS_TOKEN)."""
    return SecretStr(_secret_block(settings.nats_token_secret)) if settings.nats_token_secret else None

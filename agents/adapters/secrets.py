"""Secrets, from Prefect Secret blocks or environment variables, resolved in the process
that uses them: they never travel as task or flow parameters, so they never reach the
Prefect API's run records, logs or events."""

from __future__ import annotations

import os

from prefect.blocks.system import Secret
from prefect.utilities.asyncutils import run_coro_as_sync
from pydantic import SecretStr

from agents.errors import ConfigurationError
from agents.settings import Settings


def _secret_block(name: str) -> str:
    # Secret.load returns a coroutine wherever Prefect sees an async context, which
    # includes the thread the async task hands this to; aload is explicit everywhere.
    try:
        block: Secret[str] | None = run_coro_as_sync(Secret.aload(name))
    except ValueError as exc:
        # Prefect raises ValueError both for an unknown block and for one that fails to load.
        if "Unable to find block document" in str(exc):
            block = None
        else:
            raise ConfigurationError(f"Prefect Secret block {name!r} could not be loaded: {exc}") from None
    if block is None:
        raise ConfigurationError(f"no Prefect Secret block named {name!r}; create it or unset it")
    return str(block.get())


def model_api_key(secret_block: str | None, env_variable: str | None) -> str | None:
    """The bearer key for the model server: its Secret block if named, else the variable."""
    if secret_block:
        return _secret_block(secret_block)
    return os.environ.get(env_variable) if env_variable else None


def nats_token(settings: Settings) -> SecretStr | None:
    """The NATS token from its Secret block, if one is named (else settings keep NATS_TOKEN)."""
    return SecretStr(_secret_block(settings.nats_token_secret)) if settings.nats_token_secret else None

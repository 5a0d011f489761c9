"""How to reach and size the outside world: plain values that Settings builds (holding
every default) and the adapters take. No secret travels in them: keys and tokens are read
where they are used."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr


class LLMEndpoint(BaseModel):
    """Where and how to reach the model server. Holds no secret: the API key is read
    from the environment variable named by `api_key_env`, in the process that calls.
    Built by `Settings.llm_endpoint`, which holds every default."""

    url: str
    model: str
    api_key_env: str | None
    api_key_secret: str | None = Field(description="Prefect Secret block name.")
    connect_timeout: float = Field(gt=0)
    read_timeout: float = Field(gt=0)


class BusConfig(BaseModel):
    """How to reach NATS and size what the pipeline creates there. Built by
    `Settings.bus_config`, which holds every default."""

    url: str
    token: SecretStr | None
    creds_file: Path | None
    tls_ca_file: Path | None = Field(description="CA bundle that signed the server's cert.")
    tls_cert_file: Path | None = Field(description="Client certificate, for mutual TLS.")
    tls_key_file: Path | None
    connect_timeout: float
    publish_timeout: float
    stream_max_age_seconds: float
    stream_duplicate_window_seconds: float
    stream_max_msgs: int
    stream_discard: Literal["old", "new"]
    stream_storage: Literal["file", "memory"]
    stream_replicas: int
    results_max_age_seconds: float = Field(ge=0, description="0: keep results forever.")


class SandboxLimits(BaseModel):
    """What one run of a proposal's code may use (Settings: DELIBERATION_SANDBOX_*)."""

    cpu_seconds: int = Field(ge=1)
    memory_mb: int = Field(ge=64, description="Address space, including Python's own.")
    file_mb: int = Field(ge=1, description="Largest file it may write, its output included.")
    wall_seconds: float = Field(gt=0)
    open_files: int = Field(default=256, ge=16)

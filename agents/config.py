"""How to reach and size the outside world: plain values that Settings builds (holding
every default) and the adapters take. No secret travels in them: keys and tokens are read
where they are used."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr

DEFAULT_ENDPOINT = "default"

# How a server constrains an answer to a JSON schema through its OpenAI API:
# json_schema  `response_format: {"type": "json_schema", ...}` (vLLM, OpenAI)
# json_object  `response_format: {"type": "json_object", "schema": ...}` (llama.cpp servers)
# none         it cannot: the prompt asks for a format, and the answer is read as text
StructuredOutput = Literal["json_schema", "json_object", "none"]


class LLMEndpoint(BaseModel):
    """Where and how to reach one model server, under the name a request assigns it by.
    Holds no secret: the API key is read from the environment variable named by
    `api_key_env` (or the Secret block), in the process that calls. Built by `Settings`,
    which holds every default, and completed by the preflight (model, structured output)."""

    name: str = DEFAULT_ENDPOINT
    url: str
    model: str
    api_key_env: str | None
    api_key_secret: str | None = Field(description="Prefect Secret block name.")
    connect_timeout: float = Field(gt=0)
    read_timeout: float = Field(gt=0)
    concurrency: int | None = Field(
        default=None,
        ge=1,
        description="Calls in flight to this server from one flow process; None: the "
        "process's DELIBERATION_LLM_CONCURRENCY.",
    )
    structured_output: StructuredOutput | Literal["auto"] = Field(
        default="auto", description="auto: detected by the preflight from the server's /v1/models."
    )
    context_window: int | None = Field(
        default=None,
        ge=1,
        description="Tokens the model reads and writes per request; None: from the server's "
        "/v1/models where it says (vLLM's max_model_len), else unknown.",
    )

    @property
    def constrains_json(self) -> bool:
        """Whether its answers can be held to a JSON schema (once the preflight resolved `auto`)."""
        return self.structured_output in ("json_schema", "json_object")


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

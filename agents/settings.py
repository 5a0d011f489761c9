"""Settings from the environment.

The pipeline's own knobs use the prefix DELIBERATION_; the endpoints also answer to
the names their ecosystems use (VLLM_URL, VLLM_MODEL, NATS_URL, RAY_ADDRESS, ...).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.config import DEFAULT_ENDPOINT, BusConfig, LLMEndpoint, SandboxLimits, StructuredOutput
from agents.errors import ConfigurationError
from agents.models import ID_PATTERN


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, f"DELIBERATION_{name}")


class EndpointSpec(BaseModel):
    """A named model endpoint as an operator defines it (DELIBERATION_ENDPOINTS or the
    endpoints file); requests assign endpoints by name, never by URL."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1)
    model: str | None = Field(default=None, description="Served model name; empty: the server's first.")
    api_key_env: str | None = Field(default=None, description="Environment variable holding its API key.")
    api_key_secret: str | None = Field(default=None, description="Prefect Secret block holding its API key.")
    concurrency: int | None = Field(default=None, ge=1, le=100_000)
    structured_output: StructuredOutput | Literal["auto"] = "auto"
    context_window: int | None = Field(
        default=None, ge=1, description="Tokens per request, prompt and answer."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DELIBERATION_", extra="ignore")

    vllm_url: str | None = Field(
        default=None,
        validation_alias=_env("VLLM_URL"),
        description="OpenAI-compatible server; unset: the CLI starts the local model server.",
    )
    vllm_model: str | None = Field(default=None, validation_alias=_env("VLLM_MODEL"))
    vllm_api_key_env: str = Field(
        default="VLLM_API_KEY",
        description="Name of the environment variable that holds the API key (if any).",
    )
    vllm_api_key_secret: str | None = Field(
        default=None, description="Prefect Secret block holding the API key; wins over the variable."
    )
    vllm_connect_timeout: float = Field(default=5.0, gt=0)
    vllm_read_timeout: float = Field(default=120.0, gt=0)
    vllm_structured_output: StructuredOutput | Literal["auto"] = Field(
        default="auto",
        description="How the default server constrains ballots to JSON: json_schema (vLLM), "
        "json_object (llama.cpp), none, or auto: detected from its /v1/models.",
    )
    vllm_context_window: int | None = Field(
        default=None,
        ge=1,
        validation_alias=_env("VLLM_CONTEXT_WINDOW"),
        description="Tokens the default server's model takes per request; unset: from its "
        "/v1/models where it says (vLLM), else unknown. The CLI sets it for the local model.",
    )
    endpoints: dict[str, EndpointSpec] = Field(
        default_factory=dict,
        description="More model endpoints, by name, as JSON: "
        '{"coder": {"url": "http://...", "model": "...", "concurrency": 8}}.',
    )
    endpoints_file: Path | None = Field(
        default=None, description="A TOML file of more endpoints: [endpoints.NAME] tables."
    )

    nats_url: str | None = Field(
        default=None,
        validation_alias=_env("NATS_URL"),
        description="unset: the CLI starts a nats-server of its own.",
    )
    nats_token: SecretStr | None = Field(default=None, validation_alias=_env("NATS_TOKEN"))
    nats_token_secret: str | None = Field(
        default=None, description="Prefect Secret block holding the NATS token; wins over NATS_TOKEN."
    )
    nats_creds_file: Path | None = Field(default=None, validation_alias=_env("NATS_CREDS"))
    nats_ca_file: Path | None = Field(default=None, validation_alias=_env("NATS_CA"))
    nats_cert_file: Path | None = Field(default=None, validation_alias=_env("NATS_CERT"))
    nats_key_file: Path | None = Field(default=None, validation_alias=_env("NATS_KEY"))
    nats_connect_timeout: float = Field(default=5.0, gt=0)
    nats_publish_timeout: float = Field(default=10.0, gt=0)
    stream_max_age_seconds: float = Field(default=7 * 24 * 3600.0, gt=0)
    stream_duplicate_window_seconds: float = Field(default=24 * 3600.0, gt=0)
    stream_max_msgs: int = Field(default=-1, ge=-1, description="-1: unlimited.")
    stream_discard: Literal["old", "new"] = Field(
        default="old", description="When full: drop the oldest events, or refuse new ones."
    )
    stream_storage: Literal["file", "memory"] = "file"
    stream_replicas: int = Field(default=1, ge=1)
    results_max_age_seconds: float = Field(
        default=0.0, ge=0, description="How long the result store keeps results; 0: forever."
    )
    state_dir: Path = Field(
        default_factory=lambda: Path.home() / ".local" / "share" / "deliberation",
        description="Where the embedded nats-server keeps its JetStream state between local runs.",
    )

    ray_address: str | None = Field(default=None, validation_alias=_env("RAY_ADDRESS"))
    call_hosts: int = Field(
        default=2,
        ge=1,
        le=64,
        description="At most this many Ray actors run a process's model calls, each many at once, "
        "spread over the nodes.",
    )
    calls_per_host: int = Field(
        default=32,
        ge=1,
        description="A flow run uses one call host per this many calls of its largest stage "
        "(up to call_hosts): a small council needs one host, not all of them.",
    )
    agent_cpus: float = Field(
        default=0.05,
        gt=0,
        description="Ray CPUs each call host requests; the calls wait on I/O, so a fraction does.",
    )
    llm_concurrency: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Model calls in flight at once from one flow process (split over its call "
        "hosts; more wait for a slot). 256 is vLLM's default max_num_seqs.",
    )
    llm_concurrency_limit: str = Field(
        default="",
        description="A Prefect global concurrency limit every model call also holds a slot of, "
        "to share one model server between flow processes; empty: none.",
    )
    attempt_timeout_seconds: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=10)
    retry_backoff_seconds: float = Field(default=1.0, ge=0)

    service_role: Literal["both", "front", "runner"] = Field(
        default="both",
        description="The service: what one process does. `front` answers submit, get and cancel "
        "(no Prefect engine, no Ray: a burst of submits never waits behind the work); `runner` "
        "takes requests from the intake and runs them; `both` (the default) does both.",
    )
    service_concurrency: int = Field(
        default=4,
        ge=1,
        le=256,
        description="The service: deliberations one runner runs at once; the rest wait in the intake stream.",
    )
    service_max_tries: int = Field(
        default=3, ge=1, le=20, description="The service: runs of a request before it is concluded failed."
    )
    service_ack_wait_seconds: float = Field(
        default=30.0,
        ge=1,
        description="The service: a request whose runner gave no sign of life this long is delivered again.",
    )
    service_ready_file: Path | None = Field(
        default=None,
        description="The service: a file it keeps saying `ready`, or `waiting: <why>` while a "
        "runner waits for its model server, for a probe to read (deploy/k8s); unset: none.",
    )

    grpc_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="The service's front: the fleet orchestrator's deliberation RPCs over gRPC on "
        "this port (0: any free one); unset: no gRPC.",
    )
    grpc_host: str | None = Field(
        default=None,
        description="Where the gRPC front listens; unset: 127.0.0.1 without TLS and token, every "
        "interface with either.",
    )
    grpc_tls_cert_file: Path | None = Field(default=None, description="The gRPC front's certificate (PEM).")
    grpc_tls_key_file: Path | None = Field(default=None, description="Its private key (PEM).")
    grpc_token: SecretStr | None = Field(
        default=None, description="A bearer token every gRPC call must carry (`authorization: Bearer ...`)."
    )

    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="The service: its figures for Prometheus on http://HOST:PORT/metrics (0: any "
        "free port); unset: none.",
    )
    metrics_host: str = Field(default="127.0.0.1", description="Where /metrics listens.")

    sandbox_cpu_seconds: int = Field(default=10, ge=1, description="--run-code: CPU per proposal's run.")
    sandbox_memory_mb: int = Field(default=1024, ge=64, description="--run-code: address space per run.")
    sandbox_file_mb: int = Field(default=16, ge=1, description="--run-code: largest file (and output).")
    sandbox_wall_seconds: float = Field(default=60.0, gt=0, description="--run-code: wall clock per run.")

    @model_validator(mode="after")
    def _grpc_tls_is_whole(self) -> Settings:
        if (self.grpc_tls_cert_file is None) != (self.grpc_tls_key_file is None):
            raise ValueError("DELIBERATION_GRPC_TLS_CERT_FILE and _KEY_FILE go together: set both or neither")
        return self

    def sandbox_limits(self) -> SandboxLimits:
        return SandboxLimits(
            cpu_seconds=self.sandbox_cpu_seconds,
            memory_mb=self.sandbox_memory_mb,
            file_mb=self.sandbox_file_mb,
            wall_seconds=self.sandbox_wall_seconds,
        )

    @field_validator("endpoints")
    @classmethod
    def _endpoint_names(cls, value: dict[str, EndpointSpec]) -> dict[str, EndpointSpec]:
        _check_endpoint_names(value, "DELIBERATION_ENDPOINTS")
        return value

    def llm_endpoint(self, model: str) -> LLMEndpoint:
        """The default endpoint (VLLM_URL), serving `model`."""
        if self.vllm_url is None:
            raise ValueError("vllm_url is not set")
        return LLMEndpoint(
            url=self.vllm_url,
            model=model,
            api_key_env=self.vllm_api_key_env,
            api_key_secret=self.vllm_api_key_secret,
            connect_timeout=self.vllm_connect_timeout,
            read_timeout=self.vllm_read_timeout,
            structured_output=self.vllm_structured_output,
            context_window=self.vllm_context_window,
        )

    def named_endpoints(self) -> dict[str, LLMEndpoint]:
        """Every endpoint defined besides the default, by name: DELIBERATION_ENDPOINTS and
        the endpoints file (which may not define a name twice). Their model may still be
        empty: the preflight picks the server's first."""
        specs = dict(self.endpoints)
        if self.endpoints_file is not None:
            for name, spec in _read_endpoints_file(self.endpoints_file).items():
                if name in specs:
                    raise ConfigurationError(
                        f"endpoint {name!r} is defined twice: in DELIBERATION_ENDPOINTS "
                        f"and in {self.endpoints_file}"
                    )
                specs[name] = spec
        return {
            name: LLMEndpoint(
                name=name,
                url=spec.url,
                model=spec.model or "",
                api_key_env=spec.api_key_env,
                api_key_secret=spec.api_key_secret,
                connect_timeout=self.vllm_connect_timeout,
                read_timeout=self.vllm_read_timeout,
                concurrency=spec.concurrency,
                structured_output=spec.structured_output,
                context_window=spec.context_window,
            )
            for name, spec in specs.items()
        }

    def bus_config(self, token: SecretStr | None = None) -> BusConfig:
        """`token` (from a Secret block) wins over NATS_TOKEN."""
        if self.nats_url is None:
            raise ValueError("nats_url is not set")
        return BusConfig(
            url=self.nats_url,
            token=token or self.nats_token,
            creds_file=self.nats_creds_file,
            tls_ca_file=self.nats_ca_file,
            tls_cert_file=self.nats_cert_file,
            tls_key_file=self.nats_key_file,
            connect_timeout=self.nats_connect_timeout,
            publish_timeout=self.nats_publish_timeout,
            stream_max_age_seconds=self.stream_max_age_seconds,
            stream_duplicate_window_seconds=self.stream_duplicate_window_seconds,
            stream_max_msgs=self.stream_max_msgs,
            stream_discard=self.stream_discard,
            stream_storage=self.stream_storage,
            stream_replicas=self.stream_replicas,
            results_max_age_seconds=self.results_max_age_seconds,
        )


def bus_config_for(url: str, **overrides: object) -> BusConfig:
    """The bus configuration for `url`, with the settings' defaults and these overrides
    (BusConfig field names)."""
    settings = Settings().model_copy(update={"nats_url": url})
    return settings.bus_config().model_copy(update=overrides)


_ENDPOINT_NAME = re.compile(ID_PATTERN)


def _check_endpoint_names(specs: dict[str, EndpointSpec], where: object) -> None:
    for name in specs:
        if name == DEFAULT_ENDPOINT:
            raise ValueError(
                f"{where}: the endpoint {DEFAULT_ENDPOINT!r} is VLLM_URL's; name yours otherwise"
            )
        if not _ENDPOINT_NAME.match(name):
            raise ValueError(f"{where}: endpoint name {name!r} may hold only letters, digits, '_' and '-'")


def _read_endpoints_file(path: Path) -> dict[str, EndpointSpec]:
    """[endpoints.NAME] tables of a TOML file, each an EndpointSpec."""
    try:
        tables = tomllib.loads(path.read_text()).get("endpoints", {})
    except OSError as exc:
        raise ConfigurationError(f"cannot read the endpoints file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"the endpoints file {path} is not TOML: {exc}") from None
    if not isinstance(tables, dict):
        raise ConfigurationError(
            f"the endpoints file {path}: `endpoints` must be a table of [endpoints.NAME]"
        )
    specs = {}
    for name, table in tables.items():
        try:
            specs[name] = EndpointSpec.model_validate(table)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in (name, *error["loc"]))
            raise ConfigurationError(f"the endpoints file {path}: {where}: {error['msg']}") from None
    try:
        _check_endpoint_names(specs, path)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    return specs

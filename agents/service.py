"""The contract of the `deliberation` service on NATS (NATS services API): what its three
endpoints take and answer, the states a deliberation goes through, and the error codes.

    deliberation.submit  a DeliberationRequest           -> SubmitReply
    deliberation.get     {"deliberation_id": ...}         -> StatusReply (the result once concluded)
    deliberation.cancel  {"deliberation_id": ...}         -> StatusReply

An error is a reply with the headers `Nats-Service-Error-Code` (one of ErrorCode) and
`Nats-Service-Error` (one line saying why), as the services API defines them.
"""

from __future__ import annotations

from datetime import datetime
from enum import IntEnum, StrEnum
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.errors import describe_validation_error
from agents.models import ID_PATTERN, DeliberationRequest, DeliberationResult

SERVICE_NAME = "deliberation"
SERVICE_VERSION = "1.0.0"
ENDPOINTS = ("submit", "get", "cancel")  # each on the subject deliberation.<name>
# The key in each instance's services-API metadata that names the host it runs on (in
# Kubernetes, its pod): any instance answers `$SRV.PING.deliberation`, and this tells a
# probe (deploy/k8s/base/service_probe.py) or a person which one did.
HOST_METADATA = "host"
# What the instance does (Settings.service_role): `front` and `both` answer the endpoints,
# `runner` runs deliberations and answers only $SRV.*.
ROLE_METADATA = "role"
# A request larger than this is refused before it is parsed; the largest valid request (the
# model's own limits: task, rubric, requirements, metadata) is well under it.
MAX_PAYLOAD_BYTES = 256 * 1024

M = TypeVar("M", bound=BaseModel)


class ErrorCode(IntEnum):
    BAD_REQUEST = 400  # not JSON, not valid, too large: nothing was queued
    NOT_FOUND = 404  # no deliberation with that id
    CONFLICT = 409  # the id was first submitted with another request
    UNAVAILABLE = 503  # NATS or the intake could not take it now: submit again


class ServiceFault(Exception):
    """A request the service answers with an error reply."""

    def __init__(self, code: ErrorCode, description: str) -> None:
        super().__init__(code, description)
        self.code = code
        self.description = description


class DeliberationState(StrEnum):
    ACCEPTED = "accepted"  # stored in the intake, waiting for a runner
    RUNNING = "running"  # a flow run of `deliberate` is working on it
    COMPLETED = "completed"  # concluded with its quorum met
    FAILED = "failed"  # concluded without its quorum, or it failed on every try
    CANCELLED = "cancelled"  # stopped on request (the service or the Prefect UI)

    @property
    def concluded(self) -> bool:
        return self in (DeliberationState.COMPLETED, DeliberationState.FAILED, DeliberationState.CANCELLED)


class DeliberationRef(BaseModel):
    """The request of `get` and `cancel`."""

    model_config = ConfigDict(extra="forbid")

    deliberation_id: str = Field(pattern=ID_PATTERN)


class SubmitReply(BaseModel):
    deliberation_id: str
    status: DeliberationState


class StatusRecord(BaseModel):
    """What the service keeps of a deliberation, by its id (the key-value bucket
    DELIBERATION_STATUS); `get` answers from it."""

    deliberation_id: str
    status: DeliberationState
    request: DeliberationRequest = Field(description="As submitted, with its deliberation id.")
    request_digest: str = Field(description="What was asked; a second submit must ask the same.")
    flow_run_id: str | None = Field(default=None, description="The Prefect flow run of `deliberate`.")
    tries: int = Field(default=0, ge=0, description="Deliveries of the request to a runner so far.")
    reason: str | None = Field(default=None, description="Why it failed or was cancelled.")
    accepted_at: datetime
    updated_at: datetime


class StatusReply(BaseModel):
    deliberation_id: str
    status: DeliberationState
    flow_run_id: str | None = None
    reason: str | None = None
    result: DeliberationResult | None = Field(default=None, description="Once concluded, if it ran.")


def parse_payload(data: bytes, model: type[M]) -> M:
    """A request's payload as `model`, or a ServiceFault(400) saying in one line why not."""
    if len(data) > MAX_PAYLOAD_BYTES:
        raise ServiceFault(
            ErrorCode.BAD_REQUEST, f"payload of {len(data)} bytes is over the limit of {MAX_PAYLOAD_BYTES}"
        )
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise ServiceFault(ErrorCode.BAD_REQUEST, describe_validation_error(exc)) from None

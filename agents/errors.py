"""The small set of exceptions the rest of the code handles.

Every external failure is mapped to one of these at the boundary where it happens.
Each keeps its constructor arguments in ``args`` so it pickles across Ray and Prefect.
"""

from __future__ import annotations

from pydantic import ValidationError


class ConfigurationError(Exception):
    """Bad input or configuration the user must fix; the CLI exits with code 2."""


class Unreachable(ConfigurationError):
    """A server the run needs (the model server, NATS) did not answer. The CLI reports it
    as it reports bad configuration; a flow run that meets it is retried, since the server
    may be back in a moment."""


class LLMError(Exception):
    """A chat completion that did not produce a usable answer; `status` is the HTTP status
    the server answered with, if it answered."""

    retryable: bool = False

    def __init__(self, message: str, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(message, retry_after, status)
        self.message = message
        self.retry_after = retry_after
        self.status = status

    def __str__(self) -> str:
        return self.message


class LLMUnavailable(LLMError):
    """Transient: connection failed or dropped, read timeout, 429 or 5xx."""

    retryable = True


class LLMRejected(LLMError):
    """Permanent: the server refused the request (4xx other than 429)."""


class LLMBadResponse(LLMError):
    """Permanent: the server answered, but not with a usable completion."""


class DeliberationCancelled(Exception):
    """The deliberation was cancelled (from the Prefect UI or the service); the message says
    who asked."""


class EventBusError(Exception):
    """Publishing or reading events on NATS JetStream failed."""


class BusUnreachable(EventBusError):
    """NATS did not answer a connection (refused, or timed out): it may be back in a
    moment, where a refused authorization or TLS files that do not load will not."""


def is_decided(exc: object) -> bool:
    """A failure that running again cannot change (bad input or configuration, an id
    reused); anything else (a server away, a worker lost) may pass if tried again."""
    return isinstance(exc, ConfigurationError) and not isinstance(exc, Unreachable)


def describe_validation_error(exc: ValidationError) -> str:
    """The first problem pydantic found, in one line: `invalid <where>: <what>`."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "input"
    message = error["msg"].removeprefix("Value error, ")
    return f"invalid {where}: {message}"

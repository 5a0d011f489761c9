"""The small set of exceptions the rest of the code handles.

Every external failure is mapped to one of these at the boundary where it happens.
Each keeps its constructor arguments in ``args`` so it pickles across Ray and Prefect.
"""

from __future__ import annotations


class ConfigurationError(Exception):
    """Bad input or configuration the user must fix; the CLI exits with code 2."""


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


class EventBusError(Exception):
    """Publishing or reading events on NATS JetStream failed."""

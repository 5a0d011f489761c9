"""`python -m flows.provision`: create the JetStream event streams (or bring their limits
up to date) and the result and call buckets, then exit. A cluster runs it once as a setup job
(deploy/), so that the first flow run and any consumer find them ready and sized by the
cluster's settings (DELIBERATION_STREAM_*), not by whichever client came first.
Idempotent. Exit codes: 0 ready, 2 NATS unreachable, refused or misconfigured.
"""

from __future__ import annotations

import sys

from pydantic import ValidationError

from agents.adapters.llm import redact_url
from agents.adapters.nats import CALLS_BUCKET, RESULTS_BUCKET
from agents.errors import ConfigurationError, describe_validation_error
from agents.events import STREAM_SUBJECTS
from agents.settings import Settings
from flows.runtime.preflight import connect_event_bus

EXIT_OK, EXIT_ERROR = 0, 2


def main(argv: list[str] | None = None) -> int:
    if argv:
        print("usage: python -m flows.provision (NATS_URL and its credentials configure it)", file=sys.stderr)
        return EXIT_ERROR
    try:
        settings = Settings()
        with connect_event_bus(settings) as bus:  # creates the streams
            bus.ensure_buckets()
    except ConfigurationError as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ValidationError as exc:
        print(f"provision: {describe_validation_error(exc)}", file=sys.stderr)
        return EXIT_ERROR
    streams = ", ".join(STREAM_SUBJECTS)
    buckets = f"{RESULTS_BUCKET}, {CALLS_BUCKET}"
    print(f"ready at {redact_url(str(settings.nats_url))}: streams {streams}; buckets {buckets}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""A stored deliberation result, by id: `python -m flows.result DELIBERATION_ID` prints it
as JSON; `load_result` returns it to Python code.

Results live in the NATS key-value bucket DELIBERATION_RESULTS. With NATS_URL unset the
command opens the local state directory that `python -m flows.deliberate` used.
Exit codes: 0 found, 2 not found, bad id or NATS unreachable.
"""

from __future__ import annotations

import os
import re
import sys

from pydantic import ValidationError

from agents.adapters.nats import RESULTS_BUCKET
from agents.errors import ConfigurationError, describe_validation_error
from agents.models import ID_PATTERN, DeliberationResult
from agents.settings import Settings
from flows.cli.parsing import UsageParser
from flows.runtime.preflight import connect_event_bus

EXIT_OK, EXIT_NOT_FOUND = 0, 2


class ResultNotFound(LookupError):
    pass


def load_result(deliberation_id: str, settings: Settings | None = None) -> DeliberationResult:
    """The stored result of `deliberation_id`. Raises ResultNotFound, or ConfigurationError
    if NATS cannot be reached. NATS_URL (or `settings.nats_url`) must be set."""
    settings = settings or Settings()
    if not re.fullmatch(ID_PATTERN.strip("^$"), deliberation_id):
        raise ResultNotFound(f"{deliberation_id!r} is not a deliberation id (letters, digits, - and _)")
    with connect_event_bus(settings) as bus:
        result = bus.load_result(deliberation_id)
    if result is None:
        raise ResultNotFound(f"no result for deliberation {deliberation_id} in {RESULTS_BUCKET}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = UsageParser(
        prog="python -m flows.result",
        description="Print a stored deliberation result.",
        usage_exit=EXIT_NOT_FOUND,
    )
    parser.add_argument("deliberation_id")
    parser.add_argument("--nats-url", default=None, help="NATS server (env NATS_URL)")
    args = parser.parse_args(argv)
    if args.nats_url:
        os.environ["NATS_URL"] = args.nats_url
    try:
        settings = Settings()
        from flows.runtime.embedded import local_nats

        with local_nats(settings) as started:
            if started is not None:
                settings = settings.model_copy(update={"nats_url": started})
            result = load_result(args.deliberation_id, settings)
    except (ResultNotFound, ConfigurationError) as exc:
        print(f"result: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except ValidationError as exc:
        print(f"result: {describe_validation_error(exc)}", file=sys.stderr)
        return EXIT_NOT_FOUND
    print(result.model_dump_json(indent=2))
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())

"""The command line: `python -m flows.deliberate "TASK" [options]`.

Exit codes: 0 quorum met, 1 deliberation failed, 2 bad input or configuration.
Flags win over environment variables; stdout holds only the table (or JSON with --json).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from pydantic import ValidationError

from agents.errors import ConfigurationError, describe_validation_error
from agents.models import Constraints, DeliberationRequest, DeliberationResult
from agents.report import outcome_rows, render_table
from agents.settings import Settings
from flows.cli.context import read_context, read_diff, skipped_note
from flows.cli.parsing import UsageParser
from flows.runtime.console import every_logger
from flows.runtime.prefect_tls import share_prefect_tls_contexts

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# Flags that configure the environment rather than the request.
ENV_FLAGS = {
    "vllm_url": "VLLM_URL",
    "nats_url": "NATS_URL",
    "api_key_env": "DELIBERATION_VLLM_API_KEY_ENV",
    "ray_address": "RAY_ADDRESS",
}


def _default(field: str) -> str:
    """A request field's default, as its flag's help shows it: the model holds the value."""
    info = DeliberationRequest.model_fields[field]
    value = info.get_default(call_default_factory=True)
    if isinstance(value, list):
        value = ",".join(str(item) for item in value)
    return f"(default: {value})" if value not in (None, "") else ""


# Flags of the request, by field: given ones only, so the model's defaults apply to the rest.
REQUEST_FLAGS = [
    "roles",
    "agents_per_role",
    "temperature",
    "max_tokens",
    "deadline_seconds",
    "quorum",
    "rounds",
    "critics",
    "synthesize",
    "expects",
    "run_code",
    "context_tokens",
    "task_id",
]


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog="python -m flows.deliberate",
        description="Run a council of role agents on a software-engineering task.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("task", help="the task, e.g. 'Add rate limiting to the login endpoint'")
    parser.add_argument("--roles", help=f"comma-separated roles {_default('roles')}")
    parser.add_argument("--agents-per-role", type=int, help=_default("agents_per_role"))
    parser.add_argument("--rubric", default="")
    parser.add_argument("--requirement", action="append", default=[], help="repeat for several")
    parser.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--timeout",
        dest="deadline_seconds",
        type=float,
        help=f"deliberation deadline, seconds {_default('deadline_seconds')}",
    )
    parser.add_argument("--quorum", type=int, help="proposals needed (default: all)")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[WHO=]NAME",
        help="NAME: the model served on the default endpoint (default: VLLM_MODEL or the first); "
        "WHO=ENDPOINT: a role (DEV), an agent (agent-dev-002) or the chair speaks through the "
        "named endpoint (DELIBERATION_ENDPOINTS); repeat for several",
    )
    parser.add_argument("--temperature", type=float, help=_default("temperature"))
    parser.add_argument("--max-tokens", type=int, help=_default("max_tokens"))
    parser.add_argument("--rounds", type=int, help=f"peer-review rounds, 0: none {_default('rounds')}")
    parser.add_argument("--critics", type=int, help=f"critics per proposal and round {_default('critics')}")
    parser.add_argument("--synthesize", action="store_true", help="merge the best proposals at the end")
    parser.add_argument(
        "--expects",
        choices=["auto", "code", "any"],
        help="code: a proposal without code cannot win; auto (default): code when the task names code",
    )
    parser.add_argument(
        "--run-code",
        action="store_true",
        help="run each proposal's Python code against the other members' tests, in a sandbox "
        "(off by default; see the README for what runs, where, and the risk)",
    )
    parser.add_argument(
        "--tests",
        metavar="PATH",
        help="your own tests (a pytest file), run with --run-code against every solution beside "
        "the task's examples; failing one ranks a solution below those passing them all",
    )
    parser.add_argument(
        "--context",
        action="append",
        default=[],
        metavar="PATH",
        help="a file or directory the task is about, shown to every member (repeat for several)",
    )
    parser.add_argument(
        "--context-exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="leave out files and directories whose name or path matches (repeat for several)",
    )
    parser.add_argument("--diff", metavar="REV", help="show every member `git diff REV` of this repository")
    parser.add_argument(
        "--context-tokens",
        type=int,
        help=f"most tokens of diff and files per prompt, as characters / 4 {_default('context_tokens')}",
    )
    parser.add_argument("--task-id")
    parser.add_argument("--deliberation-id", help="reuse to resume a deliberation")
    parser.add_argument("--vllm-url", help="OpenAI-compatible server (env VLLM_URL)")
    parser.add_argument("--nats-url", help="NATS server (env NATS_URL)")
    parser.add_argument("--api-key-env", help="env variable holding the model API key")
    parser.add_argument("--ray-address", help="Ray cluster (env RAY_ADDRESS)")
    parser.add_argument("--json", action="store_true", default=False, help="print the full result as JSON")
    parser.add_argument(
        "--verbose",
        action="store_true",
        default=False,
        help="Prefect's and Ray's log lines on stderr (default: a log file)",
    )
    return parser


def request_from_args(args: argparse.Namespace) -> DeliberationRequest:
    metadata = {}
    for item in args.metadata:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"--metadata {item!r} is not KEY=VALUE")
        metadata[key] = value
    given = {name: getattr(args, name) for name in REQUEST_FLAGS if hasattr(args, name)}
    endpoints: dict[str, str] = {}
    for item in args.model:
        who, sep, endpoint = item.partition("=")
        if not sep:
            if "model" in given:
                raise ConfigurationError(f"--model {item!r}: a model was named already ({given['model']!r})")
            given["model"] = item
        elif not who or not endpoint:
            raise ConfigurationError(f"--model {item!r} is not WHO=ENDPOINT")
        elif who in endpoints:
            raise ConfigurationError(f"--model {item!r}: {who} was given an endpoint already")
        else:
            endpoints[who] = endpoint
    if endpoints:
        given["endpoints"] = endpoints
    if args.context_exclude and not args.context:
        raise ConfigurationError(
            "--context-exclude leaves out files of --context PATH; give the paths to read"
        )
    context = read_context(args.context, args.context_exclude)
    if (note := skipped_note(context)) is not None:
        print(f"deliberate: {note}", file=sys.stderr)
    diff = read_diff(args.diff) if hasattr(args, "diff") else ""
    if hasattr(args, "diff") and not diff:
        print(f"deliberate: --diff {args.diff}: no changes, so no diff to show", file=sys.stderr)
    tests = read_tests(args.tests, getattr(args, "run_code", False)) if getattr(args, "tests", None) else ""
    return DeliberationRequest(
        task=args.task,
        tests=tests,
        constraints=Constraints(rubric=args.rubric, requirements=args.requirement, metadata=metadata),
        context=context.files,
        diff=diff,
        # Fixed here so that a retried flow run reuses proposals and event ids.
        deliberation_id=getattr(args, "deliberation_id", None) or uuid.uuid4().hex,
        **given,
    )


def read_tests(path: str, run_code: bool) -> str:
    """The text of the user's test file; ConfigurationError in one line if it cannot be."""
    if not run_code:
        raise ConfigurationError(f"--tests {path}: your tests run in the sandbox; add --run-code")
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigurationError(f"--tests {path}: cannot read it: {reason}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the servers this process started are stopped. SIGINT
    # gets the same explicit handler: with Python's default one, asyncio.run turns Ctrl-C
    # into a task cancellation, which library code on the way may swallow (seen: a run
    # that went on to complete after Ctrl-C).
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    share_prefect_tls_contexts()
    try:
        request = request_from_args(args)
        for flag, variable in ENV_FLAGS.items():
            value = getattr(args, flag, None)
            if value:
                os.environ[variable] = value
        settings = Settings()
    except ValidationError as exc:
        return _fail(describe_validation_error(exc))
    except ConfigurationError as exc:
        return _fail(str(exc))

    try:
        code = _run(request, settings, as_json=args.json, verbose=args.verbose)
    except ConfigurationError as exc:
        code = _fail(str(exc))
    except KeyboardInterrupt:
        _interrupted.set()
        code = EXIT_INTERRUPTED
    # The signal decides, not the exception: a KeyboardInterrupt raised inside pydantic's
    # serializer comes out as a PydanticSerializationError, and the flow run then fails
    # like any other error (seen with Ctrl-C just after the flow run began).
    if _interrupted.is_set():
        print("deliberate: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


def _run(request: DeliberationRequest, settings: Settings, as_json: bool, verbose: bool) -> int:
    # Imported here so that bad input is refused without loading Prefect and Ray.
    from prefect.states import State

    from agents.planning import plan_council
    from flows.cli.live import LiveProgress, follow_flow_run
    from flows.deliberate import deliberate
    from flows.runtime.embedded import embedded_servers
    from flows.runtime.prefect_api import prefect_api
    from flows.runtime.preflight import connect_event_bus, resolve_speakers
    from flows.runtime.ray_setup import local_ray

    log_file = (
        None if verbose else divert_logs(settings.state_dir / "logs" / f"{request.deliberation_id}.log")
    )

    with embedded_servers(settings) as settings:
        # Check before starting anything heavy: an unreachable server is a configuration
        # error. Secret blocks can only be read once there is a Prefect API.
        models: dict[str, str] = {}

        def preflight() -> None:
            models.update((agent_id, e.model) for agent_id, e in resolve_speakers(settings, request).items())
            connect_event_bus(settings).close()

        uses_secret_blocks = bool(settings.vllm_api_key_secret or settings.nats_token_secret)
        if not uses_secret_blocks:
            preflight()
        # Ray starts while the Prefect API does: the two largest fixed costs, independent.
        with local_ray(settings) as start_ray, prefect_api(while_starting=start_ray):
            if uses_secret_blocks:
                preflight()
            invoked = datetime.now(UTC)
            live = LiveProgress(
                plan_council(request),
                str(request.deliberation_id),
                sys.stdout.isatty() and not as_json,
                models=models,
            )
            with live:
                state: State[Any] = deliberate.with_options(on_running=[follow_flow_run])(
                    request=request, return_state=True
                )
                live.expected = calls_made(state.result(raise_on_failure=False), since=invoked)
    if log_file is not None:
        print(f"deliberate: logs in {log_file}", file=sys.stderr)
    value = state.result(raise_on_failure=False)
    if isinstance(value, ConfigurationError):
        return _fail(str(value))
    if not isinstance(value, DeliberationResult):
        return _fail(f"deliberation crashed: {state.message or value}", EXIT_FAILED)
    if as_json:
        print(value.model_dump_json(indent=2))
    else:
        print(render_table(outcome_rows(value)))
        print(f"\n{value.deliberation_id}: {value.status} — {value.summary}")
        if value.winner is not None:
            tie = f" Tie-break: {value.winner.tie_break}." if value.winner.tie_break else ""
            print(f"\n{value.winner.reason}.{tie}\n\n{value.winner.content.strip()}")
        if value.synthesis is not None and value.synthesis.content:
            print(f"\nSynthesis:\n\n{value.synthesis.content.strip()}")
        for gap in value.incomplete:
            print(f"missing: {gap}")
        print(f"\nfull result: python -m flows.result {value.deliberation_id}")
    return EXIT_OK if state.is_completed() else EXIT_FAILED


def calls_made(result: object, since: datetime) -> int:
    """The model calls a deliberation's result records (each was a task run); none if it
    concluded before `since`, when this run only re-announced its stored result."""
    if not isinstance(result, DeliberationResult):
        return 0
    if result.started_at + timedelta(milliseconds=result.duration_ms) < since:
        return 0
    calls = [*result.reviews, *result.rankings, *([result.synthesis] if result.synthesis else [])]
    return sum(1 for o in result.outcomes if o.attempts) + sum(1 for c in calls if c.attempts)


def divert_logs(path: Path) -> Path:
    """Send the log lines Prefect and Ray print to the console into `path` instead: the
    terminal is for the progress and the result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s - %(message)s"))
    for logger in every_logger():
        # Prefect's console handler is a StreamHandler; a FileHandler is one too, and stays.
        consoles = [
            h
            for h in logger.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
        ]
        for console in consoles:
            logger.removeHandler(console)
        if consoles:
            logger.addHandler(handler)
    return path


_interrupted = threading.Event()


def _terminate(signum: int, frame: FrameType | None) -> NoReturn:
    _interrupted.set()
    raise KeyboardInterrupt


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"deliberate: {message}", file=sys.stderr)
    return code

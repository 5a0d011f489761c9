from agents.models import AgentStatus, ContextFile, DeliberationRequest, ErrorInfo
from agents.report import first_line, outcome_row, render_table, settings_lines
from agents.roles import Role
from tests.factories import completed, failed, proposal


def test_first_line_skips_blank_lines_and_truncates() -> None:
    assert first_line("\n\n  Use a token bucket.\nThen ...") == "Use a token bucket."
    assert first_line("x" * 100, limit=10) == "x" * 9 + "…"


def test_rows_show_tokens_and_latency_or_the_error() -> None:
    done = completed(
        attempts=2,
        duration_ms=1600,
        proposal=proposal(content="Plan:\nstep", prompt_tokens=12, completion_tokens=34, latency_ms=1500),
    )
    timed_out = failed(
        "agent-qa-001",
        Role.QA,
        status=AgentStatus.TIMED_OUT,
        duration_ms=9000,
        error=ErrorInfo(type="DeadlineExceeded", message="too slow\nmore", retryable=False),
    )
    rows = [outcome_row(done), outcome_row(timed_out)]
    assert rows[0] == {
        "agent": "agent-dev-001",
        "role": "DEV",
        "model": "m",
        "status": "completed",
        "score": "",
        "rank": "",
        "attempts": 2,
        "tokens": "12+34",
        "latency": "1.5s",
        "proposal": "Plan:",
    }
    assert rows[1]["proposal"] == "DeadlineExceeded: too slow" and rows[1]["tokens"] == rows[1]["model"] == ""
    header, first, second = render_table(rows).splitlines()
    assert header.split() == [
        "AGENT",
        "ROLE",
        "MODEL",
        "STATUS",
        "SCORE",
        "RANK",
        "ATTEMPTS",
        "TOKENS",
        "LATENCY",
        "PROPOSAL",
    ]
    assert first.index("completed") == second.index("timed_out") == header.index("STATUS")


def test_the_settings_say_how_much_context_the_request_carried_and_only_if_it_did() -> None:
    files = [ContextFile(path="a.py", content="x" * 1500), ContextFile(path="b.py", content="")]
    request = DeliberationRequest(task="t", context=files, diff="+y\n", context_tokens=800)
    row = (
        "| context | 2 file(s), 1,500 characters; a diff of 3 characters; "
        "at most 800 tokens of it per prompt |"
    )
    assert row in settings_lines(request, {"agent-dev-001": "m"})
    assert not any(line.startswith("| context") for line in settings_lines(DeliberationRequest(task="t"), {}))

"""The code a deliberation is about, within its token budget: what every prompt shows, and
what the result says was cut."""

from datetime import UTC, datetime

from agents.conclusion import conclude
from agents.context import CHARS_PER_TOKEN, fit_context, within_windows
from agents.models import ContextFile, DeliberationRequest
from tests.factories import completed

TEN_LINES = "".join(f"line {n:02d}\n" for n in range(10))  # 8 characters a line


def request_with(files: dict[str, str], diff: str = "", tokens: int = 1_000) -> DeliberationRequest:
    return DeliberationRequest(
        task="Fix the bug",
        roles=["DEV"],
        context=[ContextFile(path=path, content=text) for path, text in files.items()],
        diff=diff,
        context_tokens=tokens,
    )


def test_context_within_the_budget_is_shown_whole_and_nothing_is_reported() -> None:
    fitted = fit_context(request_with({"a.py": TEN_LINES, "empty/__init__.py": ""}, diff=TEN_LINES))
    assert [(s.name, s.text) for s in fitted.shown] == [
        ("the diff", TEN_LINES),
        ("a.py", TEN_LINES),
        ("empty/__init__.py", ""),
    ]
    assert fitted.left_out == [] and fitted.gaps() == []


def test_over_the_budget_the_first_file_that_does_not_fit_is_cut_at_a_line_and_the_rest_left_out() -> None:
    # 10 tokens = 40 characters: a.py (80) gets its first 5 lines, b.py and c.py nothing.
    fitted = fit_context(request_with({"a.py": TEN_LINES, "b.py": "x = 1\n", "c.py": "y = 2\n"}, tokens=10))
    [shown] = fitted.shown
    assert (shown.path, shown.text, shown.lines_shown, shown.lines) == ("a.py", TEN_LINES[:40], 5, 10)
    assert fitted.left_out == ["b.py", "c.py"]
    assert len(shown.text) <= 10 * CHARS_PER_TOKEN


def test_the_diff_is_counted_first() -> None:
    fitted = fit_context(request_with({"a.py": TEN_LINES}, diff=TEN_LINES, tokens=20))
    assert [s.name for s in fitted.shown] == ["the diff"] and fitted.left_out == ["a.py"]


def test_a_budget_overflow_is_reported_in_the_results_incomplete() -> None:
    request = request_with({"a.py": TEN_LINES, "b.py": TEN_LINES}, tokens=25)
    now = datetime.now(UTC)
    result = conclude(
        request, "d1", [completed("agent-dev-001")], now, now, context_cut=fit_context(request).gaps()
    )
    assert result.incomplete[0] == (
        "context over its budget of 25 tokens per prompt (estimated as characters / 4): "
        "b.py cut after line 2 of 10"
    )


def test_many_files_left_out_are_named_up_to_ten_then_counted() -> None:
    files = {"big.py": "z" * 50 + "\n", **{f"m{n:02d}.py": "x\n" for n in range(12)}}
    [gap] = fit_context(request_with(files, tokens=10)).gaps()
    assert gap.endswith(
        "left out: big.py, m00.py, m01.py, m02.py, m03.py, m04.py, m05.py, m06.py, m07.py, m08.py and 3 more"
    )


def test_other_context_is_another_request() -> None:
    one = request_with({"mathlib.py": "def gcd(a, b): ...\n"})
    assert one.digest() == request_with({"mathlib.py": "def gcd(a, b): ...\n"}).digest()
    assert one.digest() != request_with({"mathlib.py": "def gcd(a, b): pass\n"}).digest()
    assert one.digest() != request_with({"mathlib.py": "def gcd(a, b): ...\n"}, diff="+x\n").digest()


def test_the_budget_is_at_most_a_quarter_of_the_smallest_known_model_window() -> None:
    asked = request_with({"a.py": TEN_LINES}, tokens=4_000)
    assert within_windows(asked, [None, 32_768]) is asked  # a quarter of it is more than asked
    assert within_windows(asked, [2_048, None, 32_768]).context_tokens == 512
    assert within_windows(asked, [None]) is asked  # no window known: as asked
    no_context = request_with({}, tokens=4_000)
    assert within_windows(no_context, [2_048]) is no_context

"""Each deterministic check passes on good evidence and fails on bad."""

from agents.checks import (
    check_code_parses,
    check_complete,
    check_requirements,
    check_score,
    code_blocks,
    run_checks,
)

GOOD_PYTHON = "Plan:\n```python\ndef limit(n: int) -> int:\n    return n\n```\n"
BAD_PYTHON = "Plan:\n```python\ndef limit(n: int) -> int\n    return n\n```\n"


def test_complete_fails_on_empty_and_truncated_answers() -> None:
    assert check_complete("A plan.", "stop").passed
    assert check_complete("A plan.", None).passed
    empty = check_complete("  \n", "stop")
    truncated = check_complete("A plan that stops mid", "length")
    assert (empty.score, empty.detail) == (0.0, "empty answer")
    assert (truncated.score, truncated.detail) == (0.0, "truncated at the token limit")


def test_python_blocks_must_parse() -> None:
    assert check_code_parses(GOOD_PYTHON).passed
    bad = check_code_parses(BAD_PYTHON)
    assert bad.applicable and not bad.passed and bad.score == 0.0
    assert "block 1 (python)" in bad.detail


def test_json_and_yaml_blocks_are_checked_when_tagged() -> None:
    text = '```json\n{"a": 1}\n```\n```yaml\nkey: [1, 2\n```\n```bash\nnot checked (\n```\n'
    result = check_code_parses(text)
    assert result.applicable and result.score == 0.5
    assert result.detail.startswith("1 of 2 code blocks parse") and "(yaml)" in result.detail


def test_a_fence_left_open_by_truncation_is_still_checked() -> None:
    blocks = code_blocks("Intro\n```python\ndef f(:\n")
    assert blocks == [("python", "def f(:\n")]
    assert not check_code_parses("Intro\n```python\ndef f(:\n").passed


def test_code_check_does_not_apply_without_checkable_blocks() -> None:
    result = check_code_parses("No code here.\n```\nplain fence\n```")
    assert not result.applicable and not result.passed


def test_requirements_addressed_by_their_content_words() -> None:
    text = "Use a token bucket keyed per client IP; responses carry Retry-After headers. Typed code."
    result = check_requirements(
        text, ["Limit requests per client IP", "Type hints", "Audit logging to Kafka"]
    )
    assert result.applicable and not result.passed
    assert abs(result.score - 2 / 3) < 1e-9
    assert "Audit logging to Kafka" in result.detail
    assert check_requirements(text, ["retry after header"]).passed


def test_requirements_check_does_not_apply_without_requirements() -> None:
    assert not check_requirements("anything", []).applicable


def test_score_is_the_mean_of_applicable_checks() -> None:
    checks = run_checks(BAD_PYTHON, "stop", [])
    # complete 1.0, code 0.0, requirements not applicable
    assert check_score(checks) == 0.5
    assert check_score(run_checks(GOOD_PYTHON, "length", ["python function"])) == 2 / 3

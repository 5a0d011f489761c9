"""`python -m flows.deliberate`: exit codes, one-line errors, clean stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agents.conclusion import conclude
from agents.events import AgentResponseEvent, Event
from agents.models import MAX_CONTEXT_CHARS, DeliberationRequest
from agents.report import outcome_row
from agents.roles import Role
from flows.cli.main import build_parser, calls_made, main, request_from_args
from flows.result import main as result_main
from flows.runtime.embedded import free_port
from tests.factories import completed, failed
from tests.fake_llm import FakeLLMServer, status

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["   "], "invalid task: task is empty"),
        (["t", "--roles", "DEV,CEO"], "unknown role 'CEO'"),
        (["t", "--agents-per-role", "0"], "invalid agents_per_role"),
        (["t", "--roles", "DEV", "--quorum", "3"], "quorum 3 is more than the 1 agents"),
        (["t", "--timeout", "-5"], "invalid deadline_seconds"),
        (["t", "--metadata", "novalue"], "is not KEY=VALUE"),
        (["t", "--agents-per-role", "two"], "invalid int value"),
        (["t", "--bogus"], "unrecognized arguments"),
        (["t", "--context", "no/such/path"], "--context no/such/path: no such file or directory"),
        (["t", "--context-exclude", "*.md"], "--context-exclude leaves out files of --context PATH"),
        (["t", "--diff=--output=/tmp/x"], "--diff --output=/tmp/x: give a revision"),
        (["t", "--context-tokens", "0"], "invalid context_tokens"),
        (["t", "--tests", "test_it.py"], "--tests test_it.py: your tests run in the sandbox; add --run-code"),
        (["t", "--run-code", "--tests", "no/such.py"], "--tests no/such.py: cannot read it: No such file"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_code(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], captured.err


@pytest.mark.parametrize(
    ("repository", "message"),
    [
        (False, "--diff HEAD: not a git repository (or any of the parent directories): .git"),
        (True, "--diff HEAD: bad revision 'HEAD'"),  # a repository without a commit yet
    ],
)
def test_a_diff_without_a_repository_or_revision_exits_2_with_one_line(
    repository: bool,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above either
    if repository:
        subprocess.run(["git", "init", "-q"], check=True)
    assert exit_code(["t", "--diff", "HEAD"]) == 2
    assert capsys.readouterr().err == f"deliberate: {message}\n"


def test_context_too_large_for_a_request_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "big.txt").write_text("x\n" * (MAX_CONTEXT_CHARS // 2 + 1))
    monkeypatch.chdir(tmp_path)
    assert exit_code(["t", "--context", "."]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deliberate: --context: the files hold more than 200,000 characters")
    assert len(err.splitlines()) == 1


def test_context_reads_a_tree_by_relative_names_skipping_hidden_caches_excluded_and_not_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {
        "src/mathlib.py": "def gcd(a, b): ...\n",
        "src/pkg/__init__.py": "",
        "src/.secrets/key.txt": "hidden",
        "src/__pycache__/mathlib.cpython-311.pyc": "cache",
        "src/notes.md": "# excluded\n",
        "src/build/out.py": "excluded = True\n",
        "outside/util.py": "def util(): ...\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "src/logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00")
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    argv = ["t", "--context", "../src", "--context", str(tmp_path / "outside/util.py")]
    argv += ["--context-exclude", "*.md", "--context-exclude", "src/build/"]

    request = request_from_args(build_parser().parse_args(argv))

    # Outside the current directory, named from the path given: src/..., util.py.
    assert {f.path: f.content for f in request.context} == {
        "src/mathlib.py": files["src/mathlib.py"],
        "src/pkg/__init__.py": "",
        "util.py": files["outside/util.py"],
    }
    assert capsys.readouterr().err == (
        "deliberate: --context: skipped 1 file(s) not plain UTF-8 text: src/logo.png\n"
    )


def test_diff_is_git_diff_of_the_current_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "mathlib.py").write_text("def lcm(a, b):\n    return a * b\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], check=True)
    (tmp_path / "mathlib.py").write_text("def lcm(a, b):\n    return a * b // gcd(a, b)\n")

    request = request_from_args(build_parser().parse_args(["t", "--diff", "HEAD"]))

    assert "-    return a * b\n+    return a * b // gcd(a, b)\n" in request.diff
    assert request.diff.startswith("diff --git a/mathlib.py b/mathlib.py")


def exit_code(argv: list[str]) -> int | str | None:
    """main's return value, or the code argparse exits with."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_unreachable_model_server_exits_2_before_publishing(
    nats_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["t", "--vllm-url", url, "--nats-url", nats_url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"deliberate: cannot reach {url}") and "VLLM_URL" in err
    assert len(err.splitlines()) == 1


def test_unreachable_nats_exits_2(fake_llm: FakeLLMServer, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    assert main(["t", "--vllm-url", fake_llm.url, "--nats-url", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"deliberate: cannot reach NATS at {url}")
    assert fake_llm.calls == []


def test_unknown_model_exits_2(
    fake_llm: FakeLLMServer, nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["t", "--vllm-url", fake_llm.url, "--nats-url", nats_url, "--model", "gpt-9"]) == 2
    assert "model 'gpt-9' is not served" in capsys.readouterr().err


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    from prefect.settings import PREFECT_API_URL

    # The test API, not one of its own: the temporary-API path is covered by test_local_model.
    return _python(["-m", "flows.deliberate", *args], {"PREFECT_API_URL": PREFECT_API_URL.value(), **env})


def _python(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_cli_runs_a_deliberation_and_prints_only_json(
    fake_llm: FakeLLMServer, nats_url: str, read_events: Callable[[str], list[Event]], prefect_api: None
) -> None:
    fake_llm.script("agent-qa-002", status(400))
    deliberation_id = uuid.uuid4().hex
    args = [
        "Write a factorial function",
        "--roles",
        "DEV,QA",
        "--agents-per-role",
        "2",
        "--quorum",
        "3",
        "--critics",
        "1",
    ]
    args += ["--requirement", "Type hints", "--requirement", "Docstrings", "--rubric", "Correct first"]
    args += ["--deliberation-id", deliberation_id, "--json"]
    proc = _cli(args, {"VLLM_URL": fake_llm.url, "NATS_URL": nats_url})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # nothing but JSON on stdout
    assert result["status"] == "completed" and result["missing"] == ["agent-qa-002"]
    assert {o["agent_id"]: o["status"] for o in result["outcomes"]} == {
        "agent-dev-001": "completed",
        "agent-dev-002": "completed",
        "agent-qa-001": "completed",
        "agent-qa-002": "failed",
    }
    system_prompt = fake_llm.calls[0].body["messages"][0]["content"]
    assert "- Type hints" in system_prompt and "Correct first" in system_prompt
    events = read_events(deliberation_id)
    assert sorted(e.agent_id for e in events if isinstance(e, AgentResponseEvent)) == [
        "agent-dev-001",
        "agent-dev-002",
        "agent-qa-001",
        "agent-qa-002",
    ]
    # The flow's process is gone; the result is still there, by id, from another one.
    stored = _python(["-m", "flows.result", deliberation_id], {"NATS_URL": nats_url})
    assert stored.returncode == 0, stored.stderr[-3000:]
    assert json.loads(stored.stdout) == result
    # A code task ("a factorial function") answered without code by every agent: no winner.
    assert result["winner"] is None
    assert "no winner: every proposal fails a required check (has_code)" in result["incomplete"]


def test_result_of_an_unknown_deliberation_is_a_clear_not_found(
    nats_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NATS_URL", nats_url)
    for argv, message in (
        (["never-ran"], "result: no result for deliberation never-ran in DELIBERATION_RESULTS"),
        (["../etc"], "result: '../etc' is not a deliberation id (letters, digits, - and _)"),
    ):
        assert result_main(argv) == 2
        out, err = capsys.readouterr()
        assert (out, err.strip()) == ("", message)


@pytest.mark.slow
def test_cli_exits_1_and_prints_the_table_when_quorum_is_missed(
    fake_llm: FakeLLMServer, nats_url: str, prefect_api: None
) -> None:
    fake_llm.script("agent-dev-001", status(403))
    proc = _cli(["t", "--roles", "DEV"], {"VLLM_URL": fake_llm.url, "NATS_URL": nats_url})
    assert proc.returncode == 1, proc.stderr[-3000:]
    header, row = proc.stdout.splitlines()[:2]
    assert header.split() == [column.upper() for column in outcome_row(failed())]
    assert row.split()[:4] == ["agent-dev-001", "DEV", "failed", "1"]
    assert "0 of 1 proposals (quorum 1) not met" in proc.stdout


def test_the_live_view_waits_for_no_call_when_a_stored_result_is_only_re_announced() -> None:
    request = DeliberationRequest(task="t", roles=["DEV", "QA"])
    outcomes = [completed("agent-dev-001"), completed("agent-qa-001", Role.QA)]
    started = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    result = conclude(request, "d1", outcomes, started, started + timedelta(seconds=5))
    assert calls_made(result, since=started) == 2  # this run made them
    assert calls_made(result, since=started + timedelta(minutes=1)) == 0  # an earlier run did


@pytest.mark.slow
def test_an_unreachable_ray_cluster_exits_2_with_one_line(
    fake_llm: FakeLLMServer, nats_url: str, prefect_api: None
) -> None:
    address = f"ray://127.0.0.1:{free_port()}"  # nothing listens: Ray Client gives up after 30 s
    proc = _cli(["t", "--ray-address", address], {"VLLM_URL": fake_llm.url, "NATS_URL": nats_url})
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"deliberate: cannot connect to Ray at {address}: ray client connection timeout; " + (
        "check RAY_ADDRESS (or --ray-address)"
    )
    assert "Traceback" not in proc.stderr
    assert fake_llm.calls == []

"""A code task's proposal in its JSON form, rendered back to the text the other stages read."""

from __future__ import annotations

import json

from agents.checks import check_has_code
from agents.code_split import CodeSplit
from agents.proposal_form import read_fields, render_proposal


def test_a_whole_answer_renders_as_its_explanation_then_the_solution_and_the_tests_fenced() -> None:
    answer = json.dumps(
        {
            "explanation": "Iterate.",
            "solution": "```python\ndef f(n: int) -> int:\n    return n + 1\n```",
            "tests": "def test_f():\n    assert f(1) == 2\n",
        }
    )
    text = render_proposal(answer)
    # A fence the model put inside a field anyway is not doubled.
    assert text == (
        "Iterate.\n\n```python\ndef f(n: int) -> int:\n    return n + 1\n```\n\n"
        "Tests:\n\n```python\ndef test_f():\n    assert f(1) == 2\n```"
    )
    split = CodeSplit(text)
    assert "def f" in split.solution and split.test_count == 1


def test_an_answer_cut_short_keeps_what_each_field_holds_and_tests_only_stay_tests_only() -> None:
    cut = '{"explanation": "Loop.", "solution": "def f(n):\\n    return n\\n\\u00'
    assert read_fields(cut) == {"explanation": "Loop.", "solution": "def f(n):\n    return n\n"}
    assert render_proposal(cut) == "Loop.\n\n```python\ndef f(n):\n    return n\n```"
    tests_only = json.dumps(
        {"explanation": "Edge cases.", "solution": "", "tests": "def test_f():\n    assert f(0) == 0"}
    )
    assert "Tests:" in render_proposal(tests_only) and not CodeSplit(render_proposal(tests_only)).solution


def test_prose_written_in_a_code_field_is_shown_as_prose_so_it_cannot_pass_for_code() -> None:
    # What the bundled 135M model writes in the fields (BENCHMARKS.md).
    answer = json.dumps(
        {
            "explanation": "A modular design.",
            "solution": "This approach has been proven to provide optimal results.",
            "tests": "{json_data}",
        }
    )
    text = render_proposal(answer)
    assert "```" not in text
    assert not check_has_code(text, code_expected=True).passed
    # Code with a slip still reads as code: it is fenced, and code_parses says it fails.
    slip = json.dumps({"explanation": "", "solution": "def f(n):\n    return n +", "tests": ""})
    assert render_proposal(slip) == "```python\ndef f(n):\n    return n +\n```"


def test_an_answer_in_none_of_the_forms_fields_is_kept_as_written() -> None:
    for answer in ("Just prose, with ```python\nx = 1\n```", "[1, 2]", '{"other": "x"}', ""):
        assert render_proposal(answer) == answer

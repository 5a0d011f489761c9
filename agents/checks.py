"""Deterministic checks on a proposal's text: evidence that does not depend on a model's
opinion. Each returns a CheckResult that can fail; checks that do not apply (no code to
parse, no requirements) say so and are left out of the score.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence

import yaml

from agents.models import CheckResult

# ```lang\n...``` ; a fence left open (a truncated answer) runs to the end of the text.
_FENCE = re.compile(r"^```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:^```[ \t]*$|\Z)", re.DOTALL | re.MULTILINE)
_WORD = re.compile(r"[a-z0-9]+")
_STOPWORD_TEXT = """
a an and are as at be by can for from has have in into is it its must not of on or should that
the their them this to use used using when where which while will with without within each
every all any only also than then there these those been being
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_SUFFIXES = ("ing", "ed", "es", "s", "ly")


def _parse_python(code: str) -> None:
    ast.parse(code)


def _parse_json(code: str) -> None:
    json.loads(code)


def _parse_yaml(code: str) -> None:
    list(yaml.safe_load_all(code))


_PARSERS = {
    "python": _parse_python,
    "py": _parse_python,
    "python3": _parse_python,
    "json": _parse_json,
    "yaml": _parse_yaml,
    "yml": _parse_yaml,
}


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language tag, code) of every fenced block, in order; the tag is lower-cased."""
    return [(match.group(1).lower(), match.group(2)) for match in _FENCE.finditer(text)]


_UNFENCED_CODE = re.compile(
    r"^\s*(def|class|async def|function|fn|func|public|import|from \S+ import)\b", re.M
)


def looks_like_code(text: str) -> bool:
    """Whether text written where code was asked for is code: a line that starts like code,
    or Python with a statement in it (prose that happens to parse is one bare expression,
    as `response` or `{json_data}` are)."""
    if _UNFENCED_CODE.search(text):
        return True
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    return any(not isinstance(node, ast.Expr) for node in tree.body)


def check_has_code(content: str, code_expected: bool) -> CheckResult:
    """A code task needs code: a fenced block with something in it, or lines that start
    like code (def, class, function, import ...). Required: without it a proposal cannot
    win a code task, whatever else it scores."""
    if not code_expected:
        return CheckResult(
            name="has_code", applicable=False, score=1.0, detail="the task does not ask for code"
        )
    fenced = [code for _, code in code_blocks(content) if code.strip()]
    if fenced or _UNFENCED_CODE.search(content):
        found = f"{len(fenced)} code block(s)" if fenced else "unfenced code"
        return CheckResult(name="has_code", applicable=True, score=1.0, detail=found, required=True)
    return CheckResult(
        name="has_code",
        applicable=True,
        score=0.0,
        detail="no code in an answer to a code task",
        required=True,
    )


def incomplete_answer(content: str, finish_reason: str | None) -> str | None:
    """What makes an answer incomplete (empty, or cut at the token limit), or None."""
    if not content.strip():
        return "empty answer"
    if finish_reason == "length":
        return "truncated at the token limit"
    return None


def check_complete(content: str, finish_reason: str | None) -> CheckResult:
    problem = incomplete_answer(content, finish_reason)
    if problem is not None:
        return CheckResult(name="complete", applicable=True, score=0.0, detail=problem)
    return CheckResult(name="complete", applicable=True, score=1.0, detail="answer is whole")


def check_code_parses(content: str) -> CheckResult:
    """Code blocks tagged python, json or yaml must parse."""
    checked = failures = 0
    problems = []
    for index, (language, code) in enumerate(code_blocks(content), start=1):
        parse = _PARSERS.get(language)
        if parse is None:
            continue
        checked += 1
        try:
            parse(code)
        except (SyntaxError, ValueError, yaml.YAMLError) as exc:
            failures += 1
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            problems.append(f"block {index} ({language}): {reason[:120]}")
    if not checked:
        return CheckResult(
            name="code_parses", applicable=False, score=1.0, detail="no python, json or yaml code block"
        )
    detail = f"{checked - failures} of {checked} code blocks parse"
    if problems:
        detail += "; " + "; ".join(problems)
    score = (checked - failures) / checked
    return CheckResult(name="code_parses", applicable=True, score=score, detail=detail)


def _stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if len(word) - len(suffix) >= 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _terms(text: str) -> set[str]:
    return {_stem(w) for w in _content_words(text)}


def _content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if len(w) >= 3 and w not in _STOPWORDS]


def _vocabulary(text: str) -> set[str]:
    words = _content_words(text)
    return set(words) | {_stem(w) for w in words}


def _matches(term: str, vocabulary: set[str]) -> bool:
    if term in vocabulary:
        return True
    # "limit" / "limiter", "token" / "tokenbucket": a shared stem of at least 4 letters.
    return len(term) >= 4 and any(
        len(word) >= 4 and (word.startswith(term) or term.startswith(word)) for word in vocabulary
    )


def requirement_addressed(requirement: str, vocabulary: set[str]) -> bool:
    """At least half of the requirement's content words (stemmed) appear in the answer."""
    terms = _terms(requirement)
    if not terms:
        return True
    found = sum(_matches(term, vocabulary) for term in terms)
    return found * 2 >= len(terms)


def without_restatements(content: str, requirements: Sequence[str]) -> str:
    """The answer without the requirements it merely lists back ("1. Type hints",
    "- Tests"): repeating a requirement is not addressing it."""
    for requirement in requirements:
        words = r"\W+".join(re.escape(word) for word in requirement.split())
        listed = re.compile(rf"(^|[\s:;,])(?:[-*•]|\d+[.)])\s*{words}\b[.;,]?", re.IGNORECASE | re.MULTILINE)
        content = listed.sub(r"\1", content)
    return content


def check_requirements(content: str, requirements: Sequence[str]) -> CheckResult:
    if not requirements:
        return CheckResult(name="requirements", applicable=False, score=1.0, detail="no requirements given")
    vocabulary = _vocabulary(without_restatements(content, requirements))
    missed = [r for r in requirements if not requirement_addressed(r, vocabulary)]
    addressed = len(requirements) - len(missed)
    detail = f"{addressed} of {len(requirements)} requirements addressed"
    if missed:
        detail += "; not addressed: " + "; ".join(repr(r[:60]) for r in missed)
    return CheckResult(
        name="requirements", applicable=True, score=addressed / len(requirements), detail=detail
    )


def run_checks(
    content: str, finish_reason: str | None, requirements: Sequence[str], code_expected: bool = False
) -> list[CheckResult]:
    return [
        check_complete(content, finish_reason),
        check_has_code(content, code_expected),
        check_code_parses(content),
        check_requirements(content, requirements),
    ]


def check_score(checks: Sequence[CheckResult]) -> float:
    """The mean score of the checks that apply."""
    applicable = [check.score for check in checks if check.applicable]
    return sum(applicable) / len(applicable) if applicable else 1.0

"""The code a deliberation is about, fitted to the prompt: the request's diff and files
within its token budget (`context_tokens`), and what was cut, to be said in `incomplete`.

Tokens are estimated, not counted: a token is taken as 4 characters (CHARS_PER_TOKEN), a
fair mean for English and code with most tokenizers; no tokenizer of the model is needed.
The budget covers the diff's and the files' text, not the few words around them. The diff
comes first, then the files in the request's order, each whole while it fits; the first
that does not is cut after its last whole line that fits, and the rest are left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from agents.models import DeliberationRequest

CHARS_PER_TOKEN = 4
PATHS_NAMED = 10  # of the files left out, in the prompt and in `incomplete`; the rest are counted
DIFF = "the diff"  # how `incomplete` names the diff


@dataclass(frozen=True)
class ShownText:
    """A file, or the diff (no path), as the prompt shows it: all of it, or its first lines."""

    path: str | None
    text: str
    lines_shown: int
    lines: int

    @property
    def cut(self) -> bool:
        return self.lines_shown < self.lines

    @property
    def name(self) -> str:
        return self.path if self.path is not None else DIFF


@dataclass(frozen=True)
class FittedContext:
    """What of a request's context every prompt shows, and what it leaves out."""

    budget_tokens: int
    shown: list[ShownText] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)

    @property
    def diff(self) -> ShownText | None:
        return next((shown for shown in self.shown if shown.path is None), None)

    @property
    def files(self) -> list[ShownText]:
        return [shown for shown in self.shown if shown.path is not None]

    def gaps(self) -> list[str]:
        """What was cut, for the result's `incomplete`; nothing when everything fits."""
        cut = [f"{s.name} cut after line {s.lines_shown} of {s.lines}" for s in self.shown if s.cut]
        if self.left_out:
            cut.append(f"left out: {named(self.left_out)}")
        if not cut:
            return []
        return [
            f"context over its budget of {self.budget_tokens} tokens per prompt (estimated as "
            f"characters / {CHARS_PER_TOKEN}): " + "; ".join(cut)
        ]


# The share of a model's context window the context may take, in estimated tokens. The
# estimate runs short for code: the bundled model's tokenizer reads 4,096 characters of
# Python as 1,188 to 1,966 tokens, not 1,024. A quarter then takes at most half the window,
# leaving the rest to the task, the instructions, the proposals a reviewer is shown, and
# the answer.
WINDOW_SHARE = 4


def within_windows(request: DeliberationRequest, windows: Iterable[int | None]) -> DeliberationRequest:
    """The request with its context's budget at most a quarter of the smallest known
    context window of the models that read it (WINDOW_SHARE); unchanged if it has no
    context or fits."""
    known = [window for window in windows if window]
    if not (request.context or request.diff) or not known:
        return request
    budget = max(1, min(known) // WINDOW_SHARE)
    if budget >= request.context_tokens:
        return request
    return request.model_copy(update={"context_tokens": budget})


def named(paths: list[str]) -> str:
    """The first few paths by name, the rest counted."""
    more = len(paths) - PATHS_NAMED
    return ", ".join(paths[:PATHS_NAMED]) + (f" and {more} more" if more > 0 else "")


def _fit(path: str | None, text: str, room: int) -> ShownText | None:
    """`text` whole if it fits in `room` characters, else its first whole lines that do;
    None if not even its first line does."""
    lines = text.splitlines(keepends=True)
    kept, size = 0, 0
    while kept < len(lines) and size + len(lines[kept]) <= room:
        size += len(lines[kept])
        kept += 1
    if kept == 0 and lines:
        return None
    return ShownText(path, "".join(lines[:kept]), kept, len(lines))


def fit_context(request: DeliberationRequest) -> FittedContext:
    """The request's diff and files as every prompt of the deliberation shows them."""
    pieces: list[tuple[str | None, str]] = [(None, request.diff)] if request.diff else []
    pieces += [(file.path, file.content) for file in request.context]
    shown: list[ShownText] = []
    left_out: list[str] = []
    room, full = request.context_tokens * CHARS_PER_TOKEN, False
    for path, text in pieces:
        fitted = None if full else _fit(path, text, room)
        if fitted is None:
            left_out.append(path if path is not None else DIFF)
            full = True
            continue
        shown.append(fitted)
        room -= len(fitted.text)
        full = fitted.cut
    return FittedContext(request.context_tokens, shown, left_out)

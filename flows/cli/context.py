"""`--context PATH`, `--context-exclude GLOB` and `--diff REV`: the code the task is about,
read on this machine into the request, which carries it to the flow wherever that runs.

A file is named by its path relative to the current directory when it is under it, else
relative to the parent of the path given (`--context ../lib/src` gives `src/...`). In a
directory, hidden entries (`.git`, `.venv`, ...) and `__pycache__` are skipped, and a glob
excludes a file or a directory when it matches its name or its path (`*.md`, `tests`,
`docs/*`). Files that are not plain UTF-8 text (images, archives, compiled files) are
skipped and said so; a path that does not exist, or a tree over what a request carries, is
refused.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from agents.context import named
from agents.errors import ConfigurationError
from agents.models import MAX_CONTEXT_CHARS, MAX_CONTEXT_FILES, ContextFile, is_plain_text

GIT_SECONDS = 60.0
NARROW = "narrow it with --context-exclude GLOB or fewer paths"


@dataclass
class ReadContext:
    """The files read, and those skipped for not being plain text."""

    files: list[ContextFile] = field(default_factory=list)
    not_text: list[str] = field(default_factory=list)


def read_context(paths: Sequence[str], excludes: Sequence[str] = ()) -> ReadContext:
    """The files at `paths` (files, or directories walked in name order), as the request
    carries them; raises ConfigurationError for a missing path or a tree too large."""
    globs = [glob.rstrip("/") for glob in excludes]
    read = ReadContext()
    origins: dict[str, Path] = {}
    size = 0
    for given in paths:
        for name, path in _files_at(given, globs):
            if name in origins:
                if origins[name] != path:
                    raise ConfigurationError(
                        f"--context: two files are named {name}: {origins[name]} and {path}"
                    )
                continue
            origins[name] = path
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ConfigurationError(f"--context {given}: cannot read {path}: {exc.strerror}") from None
            text = _plain_text(data)
            if text is None:
                read.not_text.append(name)
                continue
            size += len(text)
            read.files.append(ContextFile(path=name, content=text))
            if len(read.files) > MAX_CONTEXT_FILES:
                raise ConfigurationError(f"--context: more than {MAX_CONTEXT_FILES} files; {NARROW}")
            if size > MAX_CONTEXT_CHARS:
                raise ConfigurationError(
                    f"--context: the files hold more than {MAX_CONTEXT_CHARS:,} characters, "
                    f"the most a request carries; {NARROW}"
                )
    return read


def _plain_text(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if is_plain_text(text) else None


def _files_at(given: str, globs: Sequence[str]) -> Iterator[tuple[str, Path]]:
    """(name, path) of each file at a path given, skipping what is hidden or excluded."""
    path = Path(os.path.abspath(given))
    if not path.exists():
        raise ConfigurationError(f"--context {given}: no such file or directory")
    here = Path(os.path.abspath(os.curdir))
    base = here if path.is_relative_to(here) else path.parent
    if path.is_file():
        yield path.relative_to(base).as_posix(), path
        return
    for folder, dirs, files in os.walk(path):
        top = Path(folder)
        dirs[:] = sorted(d for d in dirs if not _skipped(top / d, base, globs))
        for name in sorted(files):
            if not _skipped(top / name, base, globs):
                yield (top / name).relative_to(base).as_posix(), top / name


def _skipped(path: Path, base: Path, globs: Sequence[str]) -> bool:
    relative = path.relative_to(base).as_posix()
    return (
        path.name.startswith(".")
        or path.name == "__pycache__"
        or any(fnmatchcase(path.name, glob) or fnmatchcase(relative, glob) for glob in globs)
    )


def read_diff(rev: str) -> str:
    """`git diff REV` in the current directory's repository; raises ConfigurationError,
    in git's own words, where there is no repository or no such revision."""
    if rev.startswith("-"):
        raise ConfigurationError(f"--diff {rev}: give a revision (HEAD, main, a commit), not an option")
    # Asked first: outside a repository, git diff itself suggests an option of its own.
    _git(rev, "rev-parse", "--git-dir")
    try:
        return _git(rev, "diff", "--no-color", "--no-ext-diff", rev, "--").decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigurationError(f"--diff {rev}: the diff is not UTF-8 text") from None


def _git(rev: str, *args: str) -> bytes:
    """What `git ARGS` prints, or ConfigurationError with the first line of its complaint."""
    try:
        proc = subprocess.run(["git", *args], capture_output=True, timeout=GIT_SECONDS, check=False)
    except FileNotFoundError:
        raise ConfigurationError("--diff: git is not installed (not on PATH)") from None
    except subprocess.TimeoutExpired:
        raise ConfigurationError(
            f"--diff {rev}: git {args[0]} gave no answer within {GIT_SECONDS:g} s"
        ) from None
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        why = lines[0].removeprefix("fatal: ") if lines else f"git {args[0]} exited with {proc.returncode}"
        raise ConfigurationError(f"--diff {rev}: {why}")
    return proc.stdout


def skipped_note(read: ReadContext) -> str | None:
    """What the user should know was not read, in one line."""
    if not read.not_text:
        return None
    return f"--context: skipped {len(read.not_text)} file(s) not plain UTF-8 text: {named(read.not_text)}"

"""The data that crosses process boundaries: the request, proposals, outcomes, the result.

Size limits keep one deliberation's prompts bounded; they are documented in the README.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agents.roles import Role

MAX_TASK_CHARS = 20_000
MAX_RUBRIC_CHARS = 5_000
MAX_REQUIREMENTS = 50
MAX_REQUIREMENT_CHARS = 1_000
MAX_METADATA_ITEMS = 50
MAX_METADATA_CHARS = 1_000
MAX_AGENTS_PER_ROLE = 10
MAX_DEADLINE_SECONDS = 3_600.0
MAX_REVIEW_ROUNDS = 3
MAX_CRITICS = 8
# The code a request is about: at most this many files, and this many characters in all
# (files and diff), so a request stays well inside what Prefect, Ray and NATS carry.
MAX_CONTEXT_FILES = 500
MAX_CONTEXT_CHARS = 200_000
MAX_CONTEXT_PATH_CHARS = 255
MAX_USER_TESTS_CHARS = 100_000  # the user's test file
DEFAULT_CONTEXT_TOKENS = 4_000
MAX_CONTEXT_TOKENS = 100_000

CHAIR_ID = "chair"  # who speaks for the council in the synthesis
_AGENT_ID = re.compile(r"^agent-(?P<role>[a-z]+)-(?P<index>\d{3})$")

# Ids end up in NATS message ids, subjects of key-value buckets and Prefect run names.
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# What makes a task a code task: it names a code artifact or a programming language.
_CODE_TASK = re.compile(
    r"\b(functions?|class(es)?|methods?|scripts?|programs?|code|snippets?|implement(ation)?|"
    r"decorators?|modules?|regex(es)?|unit tests?|python|java|javascript|typescript|go|golang|"
    r"rust|c\+\+|c#|ruby|php|kotlin|swift|bash|shell|sql)\b",
    re.IGNORECASE,
)


def asks_for_code(task: str) -> bool:
    """Whether a task asks for code, judged from its text (the request's `expects: auto`)."""
    return bool(_CODE_TASK.search(task))


def is_plain_text(text: str) -> bool:
    """Text a request may carry: no control characters but tab, newline and carriage return."""
    return not _CONTROL_CHARS.search(text)


def _printable(text: str, what: str) -> str:
    if not is_plain_text(text):
        raise ValueError(f"{what} contains control characters; use plain text")
    return text


class ContextFile(BaseModel):
    """One file of the code the task is about, as the member sees it and, with run_code,
    as the sandbox holds it: a relative path under the project's top and its text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(
        min_length=1,
        max_length=MAX_CONTEXT_PATH_CHARS,
        description="Relative to the project's top, with / between parts, e.g. 'src/mathlib.py'.",
    )
    content: str = Field(description="The file's text.")

    @field_validator("path")
    @classmethod
    def _path_is_safe(cls, value: str) -> str:
        # The sandbox writes the file under this path: nothing may point out of its directory.
        parts = value.split("/")
        if value.startswith("/") or "\\" in value or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"context path {value[:80]!r} is not a relative path of names joined by /")
        return _printable(value, "context path")

    @field_validator("content")
    @classmethod
    def _content_is_text(cls, value: str) -> str:
        return _printable(value, "context file")


class Constraints(BaseModel):
    """What every proposal is judged against; rendered into every agent's prompt."""

    model_config = ConfigDict(extra="forbid")

    rubric: str = Field(default="", max_length=MAX_RUBRIC_CHARS, description="How proposals will be judged.")
    requirements: list[Annotated[str, Field(min_length=1, max_length=MAX_REQUIREMENT_CHARS)]] = Field(
        default_factory=list,
        max_length=MAX_REQUIREMENTS,
        description="Requirements each proposal must address, one per item.",
    )
    metadata: dict[str, str] = Field(
        default_factory=dict,
        description="Free key/value context (repository, language, ticket ...).",
    )

    @field_validator("rubric")
    @classmethod
    def _rubric_is_text(cls, value: str) -> str:
        return _printable(value.strip(), "rubric")

    @field_validator("requirements")
    @classmethod
    def _requirements_are_text(cls, value: list[str]) -> list[str]:
        cleaned = [_printable(item.strip(), "requirement") for item in value]
        if any(not item for item in cleaned):
            raise ValueError("requirements must not be blank")
        return cleaned

    @field_validator("metadata")
    @classmethod
    def _metadata_is_bounded(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_METADATA_ITEMS:
            raise ValueError(f"metadata has more than {MAX_METADATA_ITEMS} items")
        for key, item in value.items():
            if len(key) + len(item) > MAX_METADATA_CHARS:
                raise ValueError(f"metadata item {key[:40]!r} is longer than {MAX_METADATA_CHARS}")
            _printable(key + item, "metadata")
        return value


class DeliberationRequest(BaseModel):
    """One deliberation: the task, who deliberates, and under which limits.

    This is the `deliberate` flow's parameter, so the Prefect UI builds its run form
    from these fields and their descriptions.
    """

    model_config = ConfigDict(extra="forbid")

    task: str = Field(
        min_length=1,
        max_length=MAX_TASK_CHARS,
        description="The software-engineering task, e.g. 'Add rate limiting to the login endpoint'.",
    )
    task_id: str | None = Field(
        default=None,
        pattern=ID_PATTERN,
        description="Your id for the task; carried on every event. Empty: the deliberation id.",
    )
    roles: list[Role] = Field(
        default_factory=lambda: list(Role),
        min_length=1,
        description="Roles that propose: DEV, QA, ARCHITECT, DEVOPS, DATA.",
    )
    agents_per_role: int = Field(
        default=1, ge=1, le=MAX_AGENTS_PER_ROLE, description="Agents per role; extra agents diverge."
    )
    constraints: Constraints = Field(default_factory=Constraints)
    model: str | None = Field(
        default=None,
        description="Served model name on the default endpoint; empty: VLLM_MODEL, else the server's first.",
    )
    endpoints: dict[str, str] = Field(
        default_factory=dict,
        description="Which named model endpoint speaks for a role (DEV), one agent "
        "(agent-dev-002) or the chair (the synthesis); the rest use the default endpoint. "
        "Endpoints are defined by the operator (DELIBERATION_ENDPOINTS).",
    )
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(default=512, ge=1, le=32_768, description="Per proposal.")
    deadline_seconds: float = Field(
        default=120.0,
        gt=0,
        le=MAX_DEADLINE_SECONDS,
        description="Agents still running at the deadline are cancelled and reported timed_out.",
    )
    quorum: int | None = Field(
        default=None, ge=1, description="Proposals needed for success; empty: all agents."
    )
    deliberation_id: str | None = Field(
        default=None,
        pattern=ID_PATTERN,
        description="Idempotency key; reusing it reuses finished proposals. Empty: the flow run id.",
    )
    rounds: int = Field(
        default=1,
        ge=0,
        le=MAX_REVIEW_ROUNDS,
        description="Peer-review rounds: critiques by other roles, then a revision by the author. 0: none.",
    )
    critics: int = Field(
        default=2, ge=1, le=MAX_CRITICS, description="Critics per proposal and round, of other roles first."
    )
    synthesize: bool = Field(
        default=False, description="After ranking, one more call merges the best proposals into one."
    )
    expects: Literal["auto", "code", "any"] = Field(
        default="auto",
        description="What the task asks for: code (a proposal without a code block cannot win), "
        "any, or auto: code when the task names a code artifact or a programming language.",
    )

    run_code: bool = Field(
        default=False,
        description="Run each proposal's Python code against the tests the other members wrote, "
        "in a sandbox on a Ray worker (Linux with Landlock; see the README); the share of tests "
        "passed becomes the tests_pass check.",
    )
    tests: str = Field(
        default="",
        max_length=MAX_USER_TESTS_CHARS,
        description="Your own tests: a pytest file's text, run with run_code against every solution "
        "beside the examples the task and the context's docstrings state (`>>>` examples, `assert` "
        "lines). A solution failing any of your tests ranks below every one passing them all.",
    )
    context: list[ContextFile] = Field(
        default_factory=list,
        max_length=MAX_CONTEXT_FILES,
        description="The code the task is about: files shown to every member, and with run_code "
        "present, read-only, in the sandbox's working directory.",
    )
    diff: str = Field(
        default="",
        description="A diff the task is about (the CLI's --diff REV: `git diff REV`), shown to every member.",
    )
    context_tokens: int = Field(
        default=DEFAULT_CONTEXT_TOKENS,
        ge=1,
        le=MAX_CONTEXT_TOKENS,
        description="Most tokens of the diff and files in each prompt, estimated as characters / 4, "
        "and at most a quarter of the smallest known context window of the council's models; "
        "what does not fit is left out and said in the result's incomplete.",
    )

    @property
    def code_expected(self) -> bool:
        return self.expects == "code" or (self.expects == "auto" and asks_for_code(self.task))

    @field_validator("task")
    @classmethod
    def _task_is_text(cls, value: str) -> str:
        value = _printable(value.strip(), "task")
        if not value:
            raise ValueError("task is empty; describe the work to deliberate on")
        return value

    @field_validator("diff")
    @classmethod
    def _diff_is_text(cls, value: str) -> str:
        return _printable(value, "diff")

    @field_validator("tests")
    @classmethod
    def _tests_are_text(cls, value: str) -> str:
        return _printable(value, "tests")

    @field_validator("context")
    @classmethod
    def _context_is_bounded(cls, value: list[ContextFile]) -> list[ContextFile]:
        paths = [file.path for file in value]
        if len(set(paths)) != len(paths):
            twice = next(path for path in paths if paths.count(path) > 1)
            raise ValueError(f"context path {twice[:80]!r} is given twice")
        # The sandbox writes the files as a tree: no path may be both a file and a folder.
        split = [path.split("/") for path in paths]
        folders = {"/".join(parts[:end]) for parts in split for end in range(1, len(parts))}
        if both := sorted(folders.intersection(paths)):
            raise ValueError(f"context path {both[0][:80]!r} is both a file and a folder")
        return value

    @field_validator("roles", mode="before")
    @classmethod
    def _roles_by_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            names = [item.strip().upper() if isinstance(item, str) else item for item in value]
            unknown = [name for name in names if isinstance(name, str) and name not in Role.__members__]
            if unknown:
                raise ValueError(f"unknown role {unknown[0]!r}; choose from {', '.join(Role.__members__)}")
            return names
        return value

    @field_validator("roles")
    @classmethod
    def _roles_unique(cls, value: list[Role]) -> list[Role]:
        if len(set(value)) != len(value):
            raise ValueError("each role may be listed once; use agents_per_role for more agents")
        return value

    @field_validator("endpoints", mode="before")
    @classmethod
    def _endpoint_keys(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        keys = {}
        for key, name in value.items():
            if not isinstance(key, str):
                return value
            normal = key.strip().upper() if key.strip().upper() in Role.__members__ else key.strip()
            if not (normal in Role.__members__ or normal == CHAIR_ID or _AGENT_ID.match(normal)):
                raise ValueError(
                    f"{key!r} is not a role ({', '.join(Role.__members__)}), "
                    f"an agent id (agent-dev-001) or {CHAIR_ID!r}"
                )
            if not isinstance(name, str) or not re.match(ID_PATTERN, name):
                raise ValueError(f"{key}: {name!r} is not an endpoint name")
            keys[normal] = name
        return keys

    @model_validator(mode="after")
    def _endpoints_assign_members(self) -> DeliberationRequest:
        for key in self.endpoints:
            if key in Role.__members__ and key not in self.roles:
                raise ValueError(f"endpoints: role {key} is not in the council ({', '.join(self.roles)})")
            match = _AGENT_ID.match(key)
            if match and (
                match["role"].upper() not in self.roles
                or not 1 <= int(match["index"]) <= self.agents_per_role
            ):
                raise ValueError(f"endpoints: {key} is not a member of this council")
        return self

    @model_validator(mode="after")
    def _quorum_reachable(self) -> DeliberationRequest:
        if self.quorum is not None and self.quorum > self.agent_count:
            raise ValueError(f"quorum {self.quorum} is more than the {self.agent_count} agents requested")
        return self

    @model_validator(mode="after")
    def _context_fits(self) -> DeliberationRequest:
        size = len(self.diff) + sum(len(file.content) for file in self.context)
        if size > MAX_CONTEXT_CHARS:
            raise ValueError(
                f"context and diff hold {size:,} characters, over the {MAX_CONTEXT_CHARS:,} a request carries"
            )
        return self

    @property
    def agent_count(self) -> int:
        return len(self.roles) * self.agents_per_role

    @property
    def required_proposals(self) -> int:
        return self.quorum if self.quorum is not None else self.agent_count

    def digest(self) -> str:
        """What this deliberation asks, as a digest: a rerun under the same id must ask the
        same. The deadline may change (it still counts from the first start), the id is the key."""
        asked = self.model_dump_json(exclude={"deliberation_id", "deadline_seconds"})
        return hashlib.sha256(asked.encode()).hexdigest()


class AgentSpec(BaseModel):
    """One member of the council, as planned before any call is made."""

    model_config = ConfigDict(frozen=True)

    agent_id: str
    role: Role
    index: int = Field(ge=1, description="1-based position within its role.")
    temperature: float
    diverge: bool = Field(description="Told to take a distinctly different approach.")


class Proposal(BaseModel):
    content: str
    author_id: str
    author_role: Role
    model: str
    temperature: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: int
    finish_reason: str | None = None


class AgentStatus(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"


class ErrorInfo(BaseModel):
    type: str
    message: str
    retryable: bool


class AgentOutcome(BaseModel):
    """How one agent ended: a proposal, or an error saying why not."""

    agent_id: str
    role: Role
    status: AgentStatus
    attempts: int = Field(ge=0)
    duration_ms: int = Field(ge=0)
    proposal: Proposal | None = None
    error: ErrorInfo | None = None

    @model_validator(mode="after")
    def _proposal_xor_error(self) -> AgentOutcome:
        if (self.status is AgentStatus.COMPLETED) != (self.proposal is not None):
            raise ValueError("a completed outcome carries a proposal, and only it does")
        if (self.proposal is None) != (self.error is not None):
            raise ValueError("an outcome carries either a proposal or an error")
        return self


class Stage(StrEnum):
    PROPOSAL = "proposal"
    CRITIQUE = "critique"
    REVISION = "revision"
    RANKING = "ranking"
    SYNTHESIS = "synthesis"


class ModelCall(BaseModel):
    """One model call as the flow plans it: who asks what. Proposals, critiques, revisions,
    rankings and the synthesis are all calls of this one shape."""

    model_config = ConfigDict(frozen=True)

    call_id: str = Field(description="Unique within the deliberation; also the OpenAI `user` field.")
    stage: Stage
    agent_id: str = Field(description="Who speaks: the author, the critic, the reviewer, the chair.")
    messages: list[dict[str, str]]
    temperature: float
    max_tokens: int
    round: int = 0
    subject_id: str | None = Field(default=None, description="Whose proposal a critique or revision is on.")
    answer_schema: dict[str, Any] | None = Field(
        default=None,
        description="A JSON schema the answer must follow, where the endpoint can hold it to one.",
    )


class StageCall(BaseModel):
    """What came of one model call of any stage (a proposal, a critique, a revision, a
    ranking, the synthesis): its answer, or the error that ended it. The call ledger keeps
    one per call; the ModelCall it answers is the request."""

    call_id: str = Field(description="Unique within the deliberation; also the OpenAI `user` field.")
    stage: Stage
    agent_id: str = Field(description="Who spoke: the critic, the author, the ranking reviewer, the chair.")
    round: int = Field(default=0, ge=0)
    subject_id: str | None = Field(default=None, description="Whose proposal a critique or revision is on.")
    structured: bool = Field(
        default=False, description="Asked for in a JSON form (its ModelCall's answer_schema)."
    )
    status: AgentStatus
    attempts: int = Field(default=0, ge=0)
    content: str | None = None
    finish_reason: str | None = None
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int = 0
    duration_ms: int = Field(default=0, ge=0, description="From submitting the call to its outcome.")
    error: ErrorInfo | None = None

    @property
    def ok(self) -> bool:
        return self.status is AgentStatus.COMPLETED and self.content is not None


class ChatCompletion(BaseModel):
    """What a model answered to one call."""

    content: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    model: str
    latency_ms: int


class Ballot(BaseModel):
    """One reviewer's ranking of the others' proposals, shown to it under shuffled labels."""

    reviewer_id: str
    labels: dict[str, str] = Field(description="Label shown to the reviewer -> agent id.")
    order: list[str] = Field(default_factory=list, description="Agent ids, best first; empty if abstained.")
    abstained: str | None = Field(default=None, description="Why the ballot does not count.")
    model: str | None = Field(default=None, description="The model that wrote it.")
    reasons: dict[str, str] = Field(
        default_factory=dict, description="Agent id -> the reviewer's short reason (JSON ballots)."
    )
    notes: list[str] = Field(
        default_factory=list, description="What was left out of the ranking as written, and why."
    )


class CheckResult(BaseModel):
    name: str
    applicable: bool
    score: float = Field(ge=0.0, le=1.0)
    detail: str
    required: bool = Field(
        default=False, description="Failing it ranks the proposal below every one that passes."
    )

    @property
    def passed(self) -> bool:
        return self.applicable and self.score == 1.0


# How the other members' tests went for a proposal's code, best first (agents/evidence.py).
Tested = Literal["passed", "untested", "failed"]


# Which evidence decided a winner over the runner-up, in the ranking's order (agents/ranking.py).
DecidedBy = Literal[
    "required_checks",
    "user_tests",
    "self_contradiction",
    "independent_tests",
    "members_tests",
    "ballots",
    "checks",
    "score",
    "council_order",
    "sole_candidate",
]


class ProposalScore(BaseModel):
    agent_id: str
    role: Role
    version: int = Field(ge=0, description="Review round of the version scored; 0 is the original.")
    peer_score: float | None = Field(description="Mean normalized Borda points; None without ballots.")
    ballots: int
    checks: list[CheckResult]
    check_score: float
    score: float
    rank: int = Field(ge=1)
    tested: Tested | None = Field(
        default=None,
        description="On a code task with its code run: whether it passed the other members' tests, "
        "none reached it, or it failed tests_pass; ranks before the score, in that order.",
    )


class Winner(BaseModel):
    agent_id: str
    role: Role
    score: float
    version: int
    content: str
    reason: str
    decided_by: DecidedBy | None = Field(
        default=None,
        description="The evidence that put it above the runner-up: the first part of the ranking's "
        "order where they differ.",
    )
    tie_break: str | None = Field(default=None, description="How a tie for first place was broken.")


class Verdict(BaseModel):
    """What the stages after the proposals decided: the reviews, the ranking, the scores,
    the winner, the synthesis, and what is missing from them."""

    reviews: list[StageCall] = Field(default_factory=list)
    rankings: list[StageCall] = Field(default_factory=list)
    ballots: list[Ballot] = Field(default_factory=list)
    scores: list[ProposalScore] = Field(default_factory=list)
    winner: Winner | None = None
    synthesis: StageCall | None = None
    incomplete: list[str] = Field(default_factory=list)


class Usage(BaseModel):
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int = Field(default=0, description="Sum of the calls' latencies.")

    def plus(self, prompt_tokens: int | None, completion_tokens: int | None, latency_ms: int) -> Usage:
        return Usage(
            calls=self.calls + 1,
            prompt_tokens=self.prompt_tokens + (prompt_tokens or 0),
            completion_tokens=self.completion_tokens + (completion_tokens or 0),
            latency_ms=self.latency_ms + latency_ms,
        )


class UsageReport(BaseModel):
    total: Usage = Field(default_factory=Usage)
    by_agent: dict[str, Usage] = Field(default_factory=dict)
    by_stage: dict[str, Usage] = Field(default_factory=dict)
    stage_ms: dict[str, int] = Field(default_factory=dict, description="Wall time of each stage.")


class DeliberationStatus(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class DeliberationResult(BaseModel):
    deliberation_id: str
    task_id: str
    status: DeliberationStatus
    quorum: int
    completed: int
    missing: list[str] = Field(description="Ids of agents without a proposal.")
    outcomes: list[AgentOutcome]
    reviews: list[StageCall] = Field(default_factory=list, description="Critiques and revisions, in order.")
    ballots: list[Ballot] = Field(default_factory=list)
    rankings: list[StageCall] = Field(default_factory=list, description="The ranking calls, raw.")
    scores: list[ProposalScore] = Field(default_factory=list, description="Best first.")
    winner: Winner | None = None
    synthesis: StageCall | None = None
    incomplete: list[str] = Field(
        default_factory=list, description="Parts of the deliberation that are missing, and why."
    )
    usage: UsageReport = Field(default_factory=UsageReport)
    prompt_tokens: int = Field(description="All stages.")
    completion_tokens: int = Field(description="All stages.")
    started_at: datetime
    duration_ms: int
    summary: str

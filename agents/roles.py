"""The council's roles and what each one cares about."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    DEV = "DEV"
    QA = "QA"
    ARCHITECT = "ARCHITECT"
    DEVOPS = "DEVOPS"
    DATA = "DATA"


@dataclass(frozen=True)
class Persona:
    title: str
    focus: str


PERSONAS: dict[Role, Persona] = {
    Role.DEV: Persona(
        title="senior software developer",
        focus="clean, maintainable, tested code: readable names, small functions, "
        "error handling, and the tests that prove it works",
    ),
    Role.QA: Persona(
        title="quality-assurance engineer",
        focus="the test strategy: edge cases, failure modes, likely bugs, and how to "
        "verify the change before and after release",
    ),
    Role.ARCHITECT: Persona(
        title="software architect",
        focus="design: component boundaries, scalability, patterns, trade-offs, and how "
        "the change fits the system as it grows",
    ),
    Role.DEVOPS: Persona(
        title="DevOps engineer",
        focus="deployment, CI/CD, configuration, observability and operability: how the "
        "change is shipped, monitored and rolled back",
    ),
    Role.DATA: Persona(
        title="data engineer",
        focus="data models, schemas and migrations, pipelines, data quality and privacy",
    ),
}

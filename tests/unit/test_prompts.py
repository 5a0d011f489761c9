from agents.models import Constraints, ContextFile, DeliberationRequest
from agents.planning import plan_council
from agents.prompts import (
    DIVERGE_INSTRUCTION,
    critique_messages,
    proposal_messages,
    ranking_messages,
    revision_messages,
    synthesis_messages,
)
from agents.roles import PERSONAS, Role

REQUEST = DeliberationRequest(
    task="Add rate limiting to the login endpoint",
    roles=["DEV", "QA"],
    agents_per_role=2,
    constraints=Constraints(
        rubric="Correctness first", requirements=["Type hints", "Docstrings"], metadata={"lang": "python"}
    ),
)


def test_shared_context_comes_first_and_is_identical_for_every_agent() -> None:
    systems = {proposal_messages(REQUEST, agent)[0]["content"] for agent in plan_council(REQUEST)}
    assert len(systems) == 1
    (system,) = systems
    assert "Add rate limiting to the login endpoint" in system
    for rendered in ("Correctness first", "- Type hints", "- Docstrings", "- lang: python"):
        assert rendered in system


def test_role_specific_part_comes_last() -> None:
    for agent in plan_council(REQUEST):
        messages = proposal_messages(REQUEST, agent)
        assert [m["role"] for m in messages] == ["system", "user"]
        assert PERSONAS[agent.role].focus in messages[-1]["content"]
        assert PERSONAS[agent.role].focus not in messages[0]["content"]


def test_only_diverging_agents_are_told_to_take_another_approach() -> None:
    told = {
        agent.agent_id: DIVERGE_INSTRUCTION in proposal_messages(REQUEST, agent)[-1]["content"]
        for agent in plan_council(REQUEST)
    }
    assert told == {
        "agent-dev-001": False,
        "agent-dev-002": True,
        "agent-qa-001": False,
        "agent-qa-002": True,
    }


def test_every_role_has_a_persona() -> None:
    assert set(PERSONAS) == set(Role)


def test_a_context_file_reaches_every_stage_prompt_once_the_same_for_every_member() -> None:
    mathlib = "def gcd(a: int, b: int) -> int:\n    return a if b == 0 else gcd(b, a % b)\n"
    request = DeliberationRequest.model_validate(
        REQUEST.model_dump()
        | {"context": [ContextFile(path="src/mathlib.py", content=mathlib)], "diff": "+ def lcm(): ...\n"}
    )
    council = plan_council(request)
    dev, qa = council[0], council[2]
    every_stage = [
        *(proposal_messages(request, agent) for agent in council),
        critique_messages(request, qa, "Proposal text"),
        revision_messages(request, dev, "Proposal text", ["A critique"]),
        ranking_messages(request, qa, {"A": "one", "B": "two"}),
        synthesis_messages(request, ["one", "two"]),
    ]
    systems = {messages[0]["content"] for messages in every_stage}
    assert len(systems) == 1  # word for word: one prefix for vLLM's cache
    (system,) = systems
    assert system.count(mathlib) == 1 and '<file path="src/mathlib.py">' in system
    assert system.count("+ def lcm(): ...") == 1
    assert all(mathlib not in messages[1]["content"] for messages in every_stage)


def test_a_request_without_context_has_no_context_section() -> None:
    system = proposal_messages(REQUEST, plan_council(REQUEST)[0])[0]["content"]
    assert "<file" not in system and "<diff" not in system and "Left out" not in system

from agents.council import plan_council
from agents.models import Constraints, DeliberationRequest
from agents.prompts import DIVERGE_INSTRUCTION, proposal_messages
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

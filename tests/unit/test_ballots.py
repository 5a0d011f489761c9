"""JSON ballots: their schema, their reading, and the fall back to text."""

from __future__ import annotations

import json

import pytest

from agents.models import DeliberationRequest
from agents.planning import plan_council
from agents.prompts import ranking_messages
from agents.ranking import (
    EVERY_ORDER_UP_TO,
    RankingParseError,
    ballot_from_answer,
    ballot_schema,
    parse_json_ballot,
)


def test_a_small_ballot_schema_admits_each_label_exactly_once() -> None:
    schema = ballot_schema(["A", "B", "C"])
    orders = schema["properties"]["ranking"]["enum"]
    assert len(orders) == 6 and all(sorted(order) == ["A", "B", "C"] for order in orders)
    assert schema["properties"]["reasons"]["required"] == ["A", "B", "C"]
    assert list(schema["properties"]) == ["ranking", "reasons"]  # the ranking first: cut short, it stands


def test_a_large_ballot_schema_lists_labels_not_orders() -> None:
    labels = [chr(ord("A") + i) for i in range(EVERY_ORDER_UP_TO + 1)]
    ranking = ballot_schema(labels)["properties"]["ranking"]
    assert ranking["items"]["enum"] == labels
    assert ranking["minItems"] == ranking["maxItems"] == len(labels)


def test_a_json_ballot_is_read_as_written_with_its_reasons() -> None:
    answer = json.dumps({"ranking": ["C", "Proposal A", "C", "Z"], "reasons": {"A": " fine ", "Z": "?"}})
    read = parse_json_ballot(answer, ["A", "B", "C"])
    assert read.order == ["C", "A"]
    assert read.reasons == {"A": "fine"}
    assert read.notes == [
        "Proposal C ranked again: the first place given stands",
        "Proposal Z was not shown: dropped",
        "ranks 2 of 3 proposals; unranked: Proposal B",
    ]


def test_a_json_ballot_cut_at_the_token_limit_keeps_its_ranking() -> None:
    read = parse_json_ballot('{"ranking": ["B", "A"], "reasons": {"B": "the best, beca', ["A", "B"])
    assert read.order == ["B", "A"] and read.reasons == {}


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("I like them all.", "malformed ranking: no JSON ranking, and no FINAL RANKING section"),
        (
            '{"ranking": ["Q"]}',
            "malformed ranking: the JSON ranking names no proposal shown, and no FINAL RANKING section",
        ),
    ],
)
def test_an_unreadable_json_ballot_abstains_saying_what_was_looked_for(answer: str, reason: str) -> None:
    ballot = ballot_from_answer(
        "agent-qa-001", {"A": "agent-dev-001", "B": "agent-ops-001"}, answer, as_json=True
    )
    assert ballot.abstained == reason and ballot.order == []


def test_a_text_ranking_is_read_when_the_server_did_not_hold_the_answer_to_json() -> None:
    labels = {"A": "agent-dev-001", "B": "agent-architect-001"}
    ballot = ballot_from_answer(
        "agent-qa-001", labels, "FINAL RANKING:\n1. Proposal B\n2. Proposal A", as_json=True, model="m"
    )
    assert ballot.order == ["agent-architect-001", "agent-dev-001"] and ballot.model == "m"


def test_a_text_ballot_is_never_read_as_json() -> None:
    with pytest.raises(RankingParseError):
        parse_json_ballot("FINAL RANKING:\n1. Proposal A", ["A"])
    ballot = ballot_from_answer("r", {"A": "x", "B": "y"}, '{"ranking": ["A", "B"]}')
    assert ballot.abstained == "malformed ranking: no FINAL RANKING section"


def test_the_json_ranking_prompt_names_the_labels_and_gives_no_example_to_copy() -> None:
    request = DeliberationRequest(task="t", roles=["DEV", "QA", "ARCHITECT"])
    reviewer = plan_council(request)[0]
    text = ranking_messages(request, reviewer, {"A": "one", "B": "two"}, as_json=True)[-1]["content"]
    assert 'lists the labels "A", "B", each exactly once, best first' in text
    assert "FINAL RANKING" not in text and "{" not in text

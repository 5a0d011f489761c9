"""The wire between the harness and the candidate's process: values cross as themselves,
anything else is refused, and nothing decoded is more than the containers of a value."""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest

from agents.adapters.judge import wire


def no_objects(value: Any) -> dict[str, Any]:
    raise AssertionError(f"not a value: {value!r}")


def refused(node: dict[str, Any]) -> Any:
    raise wire.WireError("no references here")


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        -3,
        2**4000,
        1.5,
        float("inf"),
        "text",
        [1, [2, "x"]],
        (1, (2,), []),
        {1, "a", (2, 3)},
        frozenset({1}),
        {"a": 1, 2: [3], (4, 5): {"b": None}},
    ],
)
def test_a_value_crosses_as_itself_with_its_type(value: Any) -> None:
    stream = io.BytesIO()
    wire.allow_long_ints()
    wire.send(stream, {"value": wire.encode(value, no_objects)})
    stream.seek(0)
    decoded = wire.decode(wire.receive(stream)["value"], refused)
    assert decoded == value and type(decoded) is type(value)


def test_anything_else_is_what_the_side_makes_of_it() -> None:
    class Point:
        pass

    point = Point()
    assert wire.encode([point, True], lambda value: {"ref": 7}) == [{"ref": 7}, True]
    assert wire.decode([{"ref": 7}], lambda node: ("handle", node["ref"])) == [("handle", 7)]


@pytest.mark.parametrize(
    "node",
    [
        {"tuple": "not a list"},
        {"pickle": "gASVAAAAAAAAAAA="},
        {"dict": [[1]]},
        {"dict": [[[1], 2]]},  # an unhashable key
        {"set": [[1]]},
        {"tuple": [], "extra": 1},
        {},
    ],
)
def test_what_is_not_a_value_is_refused(node: Any) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(node, refused)


@pytest.mark.parametrize(
    "data",
    [
        b"",  # closed
        b"\x00\x00",  # closed within the header
        struct.pack(">I", wire.MAX_MESSAGE + 1),  # too large to read
        struct.pack(">I", 4) + b"nope",  # not JSON
        struct.pack(">I", 2) + b"[]",  # not an object
        struct.pack(">I", 10) + b"{}",  # closed within the message
    ],
)
def test_a_broken_or_oversized_message_is_refused(data: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.receive(io.BytesIO(data))


def test_a_message_too_large_is_not_sent() -> None:
    stream = io.BytesIO()
    with pytest.raises(wire.WireError):
        wire.send(stream, {"value": "x" * wire.MAX_MESSAGE})
    assert stream.getvalue() == b""

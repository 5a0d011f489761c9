"""What crosses the pipes between the harness and the candidate's process: length-prefixed
JSON messages of bounded size, and values in a tagged form of JSON.

Values are None, bool, int, float, str and lists as themselves; tuples, sets, frozensets
and dicts (keys of any of these hashable kinds) as {"tuple": [...]}, {"set": [...]},
{"frozenset": [...]}, {"dict": [[key, value], ...]}; anything else as a reference,
{"ref": n, "type": name}, to an object that stays in the candidate's process. Types are
checked exactly (a subclass of int is an object, not an int), and nothing is ever
unpickled or evaluated: decoding builds only the containers above.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

MAX_MESSAGE = 4 * 2**20
MAX_TEXT = 2000  # an exception's message, a type's name
# Python refuses to parse ints of more than 4300 digits by default; factorials get there.
INT_DIGITS = 100_000
_HEADER = struct.Struct(">I")
_SCALARS = (bool, int, float, str)
_COLLECTIONS = {"tuple": tuple, "set": set, "frozenset": frozenset}


class WireError(Exception):
    """The other side is gone, or sent what is not a message of this protocol."""


def send(stream: BinaryIO, message: dict[str, Any]) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise WireError(f"a message of {len(data)} bytes, more than the {MAX_MESSAGE} allowed")
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def receive(stream: BinaryIO) -> dict[str, Any]:
    (size,) = _HEADER.unpack(_read(stream, _HEADER.size))
    if size > MAX_MESSAGE:
        raise WireError(f"a message of {size} bytes, more than the {MAX_MESSAGE} allowed")
    try:
        message = json.loads(_read(stream, size))
    except (ValueError, RecursionError) as exc:
        raise WireError(f"not JSON: {exc}") from None
    if type(message) is not dict:
        raise WireError("a message that is not a JSON object")
    return message


def _read(stream: BinaryIO, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            raise WireError("it closed its pipe")
        data += chunk
    return data


def allow_long_ints() -> None:
    sys.set_int_max_str_digits(INT_DIGITS)


def encode(value: Any, other: Callable[[Any], dict[str, Any]]) -> Any:
    """`value` in the wire's form; `other` gives the form of anything that is not a value."""
    kind = type(value)
    if value is None or kind in _SCALARS:
        return value
    if kind is list:
        return [encode(item, other) for item in value]
    if kind in _COLLECTIONS.values():
        return {kind.__name__: [encode(item, other) for item in value]}
    if kind is dict:
        return {"dict": [[encode(key, other), encode(item, other)] for key, item in value.items()]}
    return other(value)


def decode(node: Any, reference: Callable[[dict[str, Any]], Any]) -> Any:
    """The value a wire form stands for; `reference` gives what a {"ref": ...} stands for.
    Raises WireError on anything else."""
    if node is None or type(node) in _SCALARS:
        return node
    if type(node) is list:
        return [decode(item, reference) for item in node]
    if type(node) is dict and "ref" in node:
        return reference(node)
    if type(node) is dict and len(node) == 1:
        [(tag, body)] = node.items()
        try:
            if tag in _COLLECTIONS and type(body) is list:
                return _COLLECTIONS[tag](decode(item, reference) for item in body)
            if tag == "dict" and type(body) is list and all(type(p) is list and len(p) == 2 for p in body):
                return {decode(key, reference): decode(item, reference) for key, item in body}
        except TypeError as exc:  # an unhashable key or member
            raise WireError(f"not a value: {exc}") from None
    raise WireError(f"not a value of this protocol: {str(node)[:100]}")


def text(value: Any) -> str:
    """A bounded string, or a placeholder where there is none."""
    return value[:MAX_TEXT] if type(value) is str else "(not a string)"

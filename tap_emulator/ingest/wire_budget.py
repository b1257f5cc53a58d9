"""Ingest, shared: a cheap look at a large message's wire form before it is decoded.

Decoding costs time per field, not per byte: a valid 16 MiB message of three million empty
headers holds the event loop for a second or more, while a 16 MiB body costs a copy. So a
message over `scan_above_bytes` is first walked at the wire level, guided by its descriptor:
the walk steps over bytes and strings by their length and counts the elements of repeated
message fields (headers, trailers, socket events, map entries) and the nesting depth, and gives
up as soon as either is over its budget. Its cost is bounded by the budget, not by the message.
A message that fits is then decoded as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

_LENGTH_DELIMITED = 2
_VARINT, _FIXED64, _FIXED32 = 0, 1, 5


class OverBudgetError(Exception):
    """The message has more repeated elements, or deeper nesting, than allowed."""


class MalformedError(Exception):
    """The wire form does not parse (decoding would fail too)."""


@dataclass(frozen=True, slots=True)
class WireBudget:
    """What a message may hold before it is decoded."""

    max_repeated_elements: int = 10_000
    max_depth: int = 32
    scan_above_bytes: int = 64 * 1024

    def check(self, raw: bytes, descriptor: Any) -> None:
        """Raise OverBudgetError (or MalformedError) if `raw` would cost too much to decode."""
        if len(raw) <= self.scan_above_bytes:
            return
        walk = _Walk(memoryview(raw), self)
        walk.message(0, len(raw), descriptor, 1)


class _Walk:
    __slots__ = ("_budget", "_data", "elements")

    def __init__(self, data: memoryview, budget: WireBudget) -> None:
        self._data = data
        self._budget = budget
        self.elements = 0

    def _varint(self, at: int, end: int) -> tuple[int, int]:
        data, value, shift = self._data, 0, 0
        while at < end and shift < 64:
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value, at
            shift += 7
        raise MalformedError("truncated or over-long varint")

    def message(self, at: int, end: int, descriptor: Any, depth: int) -> None:
        if depth > self._budget.max_depth:
            raise OverBudgetError(f"nested deeper than {self._budget.max_depth} messages")
        fields = _submessages(descriptor)
        while at < end:
            key, at = self._varint(at, end)
            number, wire_type = key >> 3, key & 7
            if wire_type == _VARINT:
                _, at = self._varint(at, end)
            elif wire_type == _FIXED64:
                at += 8
            elif wire_type == _FIXED32:
                at += 4
            elif wire_type == _LENGTH_DELIMITED:
                length, at = self._varint(at, end)
                if at + length > end:
                    raise MalformedError("a field runs past the end of its message")
                submessage = fields.get(number)
                if submessage is not None:
                    inner, repeated = submessage
                    if repeated:
                        self.elements += 1
                        if self.elements > self._budget.max_repeated_elements:
                            raise OverBudgetError(
                                f"more than {self._budget.max_repeated_elements} repeated "
                                "elements (headers, trailers, events or map entries)"
                            )
                    self.message(at, at + length, inner, depth + 1)
                at += length
            else:
                raise MalformedError(f"wire type {wire_type} is not used by these messages")
        if at != end:
            raise MalformedError("a field runs past the end of its message")


_SUBMESSAGES: dict[str, dict[int, tuple[Any, bool]]] = {}


def _submessages(descriptor: Any) -> dict[int, tuple[Any, bool]]:
    """A message type's message-typed fields by number: (their type, repeated or not)."""
    known = _SUBMESSAGES.get(descriptor.full_name)
    if known is None:
        known = {
            field.number: (field.message_type, bool(field.is_repeated))
            for field in descriptor.fields
            if field.type == FieldDescriptor.TYPE_MESSAGE
        }
        _SUBMESSAGES[descriptor.full_name] = known
    return known

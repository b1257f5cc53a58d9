"""Envoy's JSON traces to queue items: parsed into our TraceWrapper (fields this version
does not know are ignored), told apart when empty, and given their `trace_id`."""

from __future__ import annotations

import json
import re

from google.protobuf import json_format
from google.protobuf.message import Message

from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
from tap_emulator.tools.relay.queue import Item

_EMPTY_OBJECT = re.compile(rb"\{\s*\}")
_SEGMENTS = ("http_streamed_trace_segment", "socket_streamed_trace_segment")


def trace_from_json(raw: bytes) -> TraceWrapper:
    """One JSON TraceWrapper as Envoy prints it, in our TraceWrapper. Raises ValueError if
    it is not one. The bytes go to json as they are, so their text is only held while json
    parses it: for a large trace that is one copy fewer than json_format.Parse keeps."""
    try:
        document = json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None
    trace = TraceWrapper()
    try:
        json_format.ParseDict(document, trace, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise ValueError(str(exc)) from exc
    return trace


def _has_content(message: Message, ignored: str = "") -> bool:
    """True if any field in `message` (but `ignored`), however deep, holds a value."""
    for field, value in message.ListFields():
        if field.name == ignored:
            continue
        if field.message_type is None:
            return True  # ListFields lists only scalars that hold a value
        values = value if field.is_repeated else [value]
        if any(_has_content(each) for each in values):
            return True
    return False


def is_empty(trace: TraceWrapper) -> bool:
    """Nothing in it: no trace we know of, or one whose fields hold nothing (a segment's
    own trace_id aside)."""
    kind = trace.WhichOneof("trace")
    if kind is None:
        return True
    return not _has_content(getattr(trace, kind), "trace_id" if kind in _SEGMENTS else "")


class TraceConverter:
    """Turns JSON traces into items; buffered traces get consecutive ids (from 1), streamed
    segments keep their own."""

    def __init__(self) -> None:
        self._buffered_ids = 0

    def item(self, raw: bytes, identifier: bytes) -> Item | None:
        """The item for `raw`; None if the trace is empty. ValueError if it is not a trace."""
        if _EMPTY_OBJECT.fullmatch(raw):
            return None  # `{}`, by far the commonest empty one, needs no parser
        trace = trace_from_json(raw)
        if is_empty(trace):
            return None
        kind = trace.WhichOneof("trace")
        if kind in _SEGMENTS:
            trace_id = getattr(trace, kind).trace_id
        else:
            self._buffered_ids += 1
            trace_id = self._buffered_ids
        return Item(identifier, trace_id, trace.SerializeToString())

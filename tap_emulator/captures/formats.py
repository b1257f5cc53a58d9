"""Split one trace file's bytes into its serialized `TraceWrapper`s, whatever wrote it.

By suffix:
- `.pb`: serialized `TraceWrapper`s. One, as Envoy's buffered `PROTO_BINARY` and the
  emulator write it, or several concatenated without delimiters, as Envoy's streamed
  `PROTO_BINARY` writes them. A TraceWrapper is exactly one top-level field (a oneof), so
  each top-level field is one trace; parsing the file naively would merge them.
- `.pb_length_delimited`: each `TraceWrapper` preceded by its length as a varint.
- `.json`: one JSON `TraceWrapper`, several back to back (Envoy's streamed JSON), or a
  JSON array of them.
- `.pb_text`: one `TraceWrapper` in protobuf text format.

Twins: the same capture kept in two formats side by side (`X.pb` and `X.pb.json`, or Envoy's
`tap_1.pb` and `tap_1.json`) is one capture. A reader keeps the binary one: JSON and text
files yield to a binary file of the same base name, and JSON to text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable

from google.protobuf import json_format, text_format
from google.protobuf.message import DecodeError

from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
from tap_emulator.captures.json_objects import JsonObjectSplitter

BINARY = ".pb"
LENGTH_DELIMITED = ".pb_length_delimited"
JSON = ".json"
TEXT = ".pb_text"
SUFFIXES = (BINARY, LENGTH_DELIMITED, JSON, TEXT)
# Higher wins when twins sit side by side: binary bytes are what Envoy and the emulator wrote.
_RANK = {BINARY: 2, LENGTH_DELIMITED: 2, TEXT: 1, JSON: 0}

_LENGTH_DELIMITED_WIRE_TYPE = 2
_MAX_VARINT_BYTES = 10


class TraceFileError(Exception):
    """A file that is not a trace file we can read; the message names the file and why."""


def suffix_of(name: str) -> str | None:
    """The trace format a file name says it holds (one of SUFFIXES), or None."""
    dot = name.rfind(".")
    suffix = name[dot:] if dot > 0 else ""
    return suffix if suffix in _RANK else None


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    for index in range(position, min(len(data), position + _MAX_VARINT_BYTES)):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index + 1
        shift += 7
    raise ValueError("truncated or overlong varint")


def split_top_level_fields(data: bytes) -> list[bytes]:
    """Each length-delimited top-level field of a serialized message, with its tag."""
    fields = []
    position = 0
    while position < len(data):
        start = position
        key, position = _read_varint(data, position)
        if key & 7 != _LENGTH_DELIMITED_WIRE_TYPE or key >> 3 == 0:
            raise ValueError(f"unexpected top-level field (key {key}) at byte {start}")
        size, position = _read_varint(data, position)
        position += size
        if position > len(data):
            raise ValueError(f"field at byte {start} runs past the end")
        fields.append(data[start:position])
    return fields


def split_length_delimited(data: bytes) -> list[bytes]:
    """The messages of a varint-length-prefixed stream, in order."""
    messages = []
    position = 0
    while position < len(data):
        size, position = _read_varint(data, position)
        if position + size > len(data):
            raise ValueError(f"message of {size} bytes at byte {position} runs past the end")
        messages.append(data[position : position + size])
        position += size
    return messages


def _one_trace(raw: bytes, parse_check: bool) -> bytes:
    """`raw` if it is a single TraceWrapper (exactly one length-delimited field)."""
    if len(split_top_level_fields(raw)) != 1:
        raise ValueError("a TraceWrapper holds exactly one trace")
    if parse_check:
        TraceWrapper.FromString(raw)
    return raw


def _from_json(item: object) -> bytes:
    trace = TraceWrapper()
    if not isinstance(item, dict):
        raise ValueError("expected a JSON object")
    json_format.ParseDict(item, trace, ignore_unknown_fields=True)
    return trace.SerializeToString()


def _json_traces(data: bytes) -> list[bytes]:
    if data.lstrip()[:1] == b"[":
        items = json.loads(data)
        return [_from_json(item) for item in items]
    splitter = JsonObjectSplitter(max(len(data), 2))
    objects = splitter.feed(data)
    if splitter.pending or splitter.stray_bytes:
        raise ValueError("not a sequence of JSON objects")
    traces = []
    for raw in objects:
        trace = TraceWrapper()
        json_format.Parse(raw.decode("utf-8"), trace, ignore_unknown_fields=True)
        traces.append(trace.SerializeToString())
    return traces


def split_traces(
    name: str, data: bytes, default_suffix: str | None = None, parse_check: bool = True
) -> list[bytes]:
    """The serialized TraceWrappers in a file called `name` holding `data`, in file order;
    a name without a known suffix is read as `default_suffix` if one is given. Without
    `parse_check` binary traces are only split, for a caller that parses them next."""
    suffix = suffix_of(name) or default_suffix
    try:
        if suffix == LENGTH_DELIMITED:
            return [_one_trace(raw, parse_check) for raw in split_length_delimited(data)]
        if suffix == BINARY:
            fields = split_top_level_fields(data)
            for raw in fields if parse_check else ():
                TraceWrapper.FromString(raw)
            return fields
        if suffix == JSON:
            return _json_traces(data)
        if suffix == TEXT:
            trace = TraceWrapper()
            text_format.Parse(data.decode("utf-8"), trace)
            return [trace.SerializeToString()]
    except (ValueError, DecodeError, json_format.ParseError, text_format.ParseError) as exc:
        raise TraceFileError(f"{name}: not a {suffix} trace file: {exc}") from exc
    raise TraceFileError(f"{name}: unknown kind of file (expected one of {', '.join(SUFFIXES)})")


def _base_of(name: str) -> str:
    base = name[: -len(JSON)] if name.endswith(JSON) else name
    for suffix in (LENGTH_DELIMITED, TEXT, BINARY):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def twins_preferred_over(name: str) -> list[str]:
    """The names of the twins that `name` yields to, if any sits beside it."""
    suffix = suffix_of(name)
    if suffix is None or _RANK[suffix] == _RANK[BINARY]:
        return []
    base = _base_of(name)
    candidates = [base + BINARY, base + LENGTH_DELIMITED]
    if _RANK[suffix] < _RANK[TEXT]:
        candidates.append(base + TEXT)
    return [candidate for candidate in candidates if candidate != name]


def is_shadowed(directory: str, name: str, exists: Callable[[str], bool] = os.path.exists) -> bool:
    """True if a twin that `name` yields to exists in `directory` (a stat per candidate)."""
    # Plain strings rather than Path objects: this runs once per JSON file of a big directory.
    return any(exists(f"{directory}{os.sep}{twin}") for twin in twins_preferred_over(name))


def without_shadowed(paths: Iterable[str]) -> list[str]:
    """`paths` in order, less those whose preferred twin is also among them."""
    listed = list(paths)
    present = set(listed)
    kept = []
    for path in listed:
        directory, _, name = path.rpartition(os.sep)
        prefix = f"{directory}{os.sep}" if directory else ""
        twins = (prefix + twin for twin in twins_preferred_over(name))
        if not any(twin in present for twin in twins):
            kept.append(path)
    return kept

"""Read trace files: Envoy `file_per_tap` output and the emulator's own files.

By suffix:
- `.pb`: serialized `TraceWrapper`s. One, as Envoy's buffered `PROTO_BINARY` and the
  emulator write it, or several concatenated without delimiters, as Envoy's streamed
  `PROTO_BINARY` writes them. A TraceWrapper is exactly one top-level field (a oneof), so
  each top-level field is one trace; parsing the file naively would merge them.
- `.pb_length_delimited`: each `TraceWrapper` preceded by its length as a varint.
- `.json`: one JSON `TraceWrapper`, several back to back (Envoy's streamed JSON), or a
  JSON array of them.
- `.pb_text`: one `TraceWrapper` in protobuf text format.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from google.protobuf import json_format, text_format
from google.protobuf.message import DecodeError

from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
from tap_emulator.captures.json_objects import JsonObjectSplitter

SUFFIXES = (".pb", ".pb_length_delimited", ".json", ".pb_text")
_LENGTH_DELIMITED_WIRE_TYPE = 2
_VARINT_WIRE_TYPE = 0
_MAX_VARINT_BYTES = 10


class TraceFileError(Exception):
    """A file that is not a trace file we can read; the message names the file and why."""


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
    messages = []
    position = 0
    while position < len(data):
        size, position = _read_varint(data, position)
        if position + size > len(data):
            raise ValueError(f"message of {size} bytes at byte {position} runs past the end")
        messages.append(data[position : position + size])
        position += size
    return messages


def _checked(raw: bytes) -> bytes:
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


def read_traces(path: Path) -> list[bytes]:
    """The serialized TraceWrappers in one file, in file order."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TraceFileError(f"{path}: cannot read: {exc.strerror}") from exc
    suffix = path.suffix
    try:
        if suffix == ".pb_length_delimited":
            return [_checked(raw) for raw in split_length_delimited(data)]
        if suffix == ".pb":
            return [_checked(raw) for raw in split_top_level_fields(data)]
        if suffix == ".json":
            return _json_traces(data)
        if suffix == ".pb_text":
            trace = TraceWrapper()
            text_format.Parse(data.decode("utf-8"), trace)
            return [trace.SerializeToString()]
    except (ValueError, DecodeError, json_format.ParseError, text_format.ParseError) as exc:
        raise TraceFileError(f"{path}: not a {suffix} trace file: {exc}") from exc
    raise TraceFileError(f"{path}: unknown kind of file (expected one of {', '.join(SUFFIXES)})")


def find_trace_files(paths: Iterable[Path], patterns: tuple[str, ...] = ()) -> list[Path]:
    """Files named on the command line, in order, then the trace files under each directory
    (recursively, sorted by path; hidden files skipped), kept when they match a pattern."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(_walk(path, patterns))
        elif path.exists():
            found.append(path)
        else:
            raise TraceFileError(f"{path}: no such file or directory")
    return found


def _walk(directory: Path, patterns: tuple[str, ...]) -> Iterator[Path]:
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if path.suffix not in SUFFIXES:
            continue
        if patterns and not any(path.match(pattern) for pattern in patterns):
            continue
        yield path

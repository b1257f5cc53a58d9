"""Print trace files as readable JSON: headers as lists, bodies as text where they are text,
gRPC bodies split into their length-prefixed frames, everything else as base64.

Every trace of a file is printed, one JSON object each (`index` tells them apart where a
file holds several: Envoy's streamed `.pb` and `.pb_length_delimited` files); directories
are read like `list` reads them (twins once, the binary one)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from google.protobuf.json_format import MessageToDict

from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
from tap_emulator.captures.formats import BINARY, TraceFileError, split_traces
from tap_emulator.captures.reader import ReadReport, trace_files

_GRPC_FRAME_HEADER_BYTES = 5
_TEXT_CONTROLS = frozenset("\t\r\n")


def as_text(data: bytes) -> str | None:
    """`data` as a string if it is UTF-8 without control characters other than whitespace."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any((ord(c) < 0x20 and c not in _TEXT_CONTROLS) or ord(c) == 0x7F for c in text):
        return None
    return text


def grpc_frames(data: bytes, truncated: bool) -> list[dict[str, Any]] | None:
    """Split a body into gRPC messages if it is exactly a sequence of them (the last may be
    cut short when the proxy truncated the body); None if it is not gRPC framing."""
    frames: list[dict[str, Any]] = []
    offset = 0
    while offset < len(data):
        header = data[offset : offset + _GRPC_FRAME_HEADER_BYTES]
        if len(header) < _GRPC_FRAME_HEADER_BYTES or header[0] not in (0, 1):
            return None
        length = int.from_bytes(header[1:], "big")
        start = offset + _GRPC_FRAME_HEADER_BYTES
        payload = data[start : start + length]
        if len(payload) < length and not truncated:
            return None
        frame: dict[str, Any] = {"compressed": bool(header[0]), "length": length}
        if len(payload) < length:
            frame["cut_at"] = len(payload)
        frame["data_base64"] = base64.b64encode(payload).decode()
        text = as_text(payload)
        if text is not None and text:
            frame["text"] = text
        frames.append(frame)
        offset = start + length
    return frames or None


def readable_body(body: dict[str, Any]) -> dict[str, Any]:
    """Replace a Body's base64 `as_bytes` by text or frames where that is what it holds."""
    shown: dict[str, Any] = {}
    truncated = bool(body.get("truncated", False))
    if "as_bytes" in body:
        data = base64.b64decode(body["as_bytes"])
        frames = grpc_frames(data, truncated)
        text = as_text(data)
        if frames is not None:
            shown["grpc_frames"] = frames
        elif text is not None:
            shown["text"] = text
        else:
            shown["base64"] = body["as_bytes"]
        shown["bytes"] = len(data)
    elif "as_string" in body:
        shown["text"] = body["as_string"]
        shown["bytes"] = len(body["as_string"].encode())
    if truncated:
        shown["truncated"] = True
    return shown


def _readable(node: Any) -> Any:
    if isinstance(node, dict):
        if "as_bytes" in node or "as_string" in node:
            return readable_body(node)
        return {key: _readable(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_readable(item) for item in node]
    return node


def _shown(path: Path, raw: bytes, index: int | None = None) -> dict[str, Any]:
    as_dict = MessageToDict(TraceWrapper.FromString(raw), preserving_proto_field_name=True)
    shown: dict[str, Any] = {"file": str(path)}
    if index is not None:
        shown["index"] = index
    shown["trace"] = _readable(as_dict)
    return shown


def describe(path: Path) -> list[dict[str, Any]]:
    """Each trace of a file as a JSON-ready dict (one with `error` when it cannot be read)."""
    try:
        traces = split_traces(str(path), path.read_bytes(), default_suffix=BINARY)
    except OSError as exc:
        return [{"file": str(path), "error": f"cannot read: {exc.strerror}"}]
    except TraceFileError as exc:
        return [{"file": str(path), "error": str(exc)}]
    if len(traces) == 1:
        return [_shown(path, traces[0])]
    return [_shown(path, raw, index) for index, raw in enumerate(traces)]


def inspect_files(paths: Iterable[Path], out: TextIO, *, compact: bool = False) -> int:
    """Print each trace of each file (directories walked); 1 if any could not be read."""
    status = 0
    report = ReadReport()
    for found in trace_files(paths, report):
        for shown in describe(Path(found.path)):
            if "error" in shown:
                status = 1
            out.write(json.dumps(shown, ensure_ascii=False, indent=None if compact else 2))
            out.write("\n")
    for complaint in report.unreadable:
        status = 1
        out.write(json.dumps({"error": complaint}, ensure_ascii=False) + "\n")
    return status

"""Reads the real-Envoy ext_proc vectors (tests/fixtures/vectors/extproc) as raw bytes and
plain data: one case is one HTTP transaction seen by Envoy's ext_proc filter (the Process
stream's gRPC metadata, its ProcessingRequests in order, how the stream ended), by the client,
and by Envoy's tap filter. No protobuf here: tests parse the bytes with the classes they test.
"""

from __future__ import annotations

import base64
import gzip
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

EXTPROC_VECTORS = Path(__file__).resolve().parents[1] / "fixtures" / "vectors" / "extproc"

Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class StreamEnd:
    """How Envoy ended the Process stream, as the recorder saw it."""

    eof: bool
    cancelled: bool
    eof_after_last_message_seconds: float | None
    cancelled_after_last_message_seconds: float | None
    stream_seconds: float


@dataclass(frozen=True)
class ClientView:
    """What the client sent and got. `status` is None when the client gave up; a gRPC
    client's view is HTTP/2's (frames with their 5-byte prefixes, grpc-status in trailers)."""

    protocol: str
    method: str
    path: str
    request_headers: Headers
    request_body_bytes: int
    request_body_sha256: str
    status: int | None
    response_headers: Headers
    response_body_bytes: int
    response_body_sha256: str
    response_trailers: Headers
    note: str


@dataclass(frozen=True)
class ExtProcCase:
    name: str  # "<listener>/<case>", e.g. "inbound/h1_get"
    listener: str  # inbound, outbound, attributes
    case: str
    description: str
    metadata: list[tuple[str, str | bytes]]  # the stream's gRPC metadata, in arrival order
    messages: list[bytes]  # serialized ProcessingRequests, in arrival order
    sequence: str  # e.g. "RqH(eos) RsH RsB(50) RsB(0,eos)"
    end: StreamEnd
    client: ClientView
    tap_path: Path | None  # Envoy's tap file for the same request (may end in .gz)

    def metadata_value(self, key: str) -> str | bytes | None:
        return next((value for k, value in self.metadata if k == key), None)

    def tap_trace(self) -> bytes | None:
        """The tap file's content: one serialized envoy.data.tap.v3.TraceWrapper."""
        return None if self.tap_path is None else read_fixture(self.tap_path)


def read_fixture(path: Path) -> bytes:
    """A fixture file's bytes; the large ones are stored gzip-compressed."""
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def length_delimited(data: bytes) -> list[bytes]:
    """Splits [varint length][message] repeated."""
    messages, position = [], 0
    while position < len(data):
        size = shift = 0
        while True:
            byte = data[position]
            position += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        messages.append(data[position : position + size])
        position += size
    if position != len(data):
        raise ValueError("the last length-delimited message is cut short")
    return messages


@cache
def _manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / "manifest.json").read_text())  # type: ignore[no-any-return]


def case_names(root: Path = EXTPROC_VECTORS) -> list[str]:
    return [entry["name"] for entry in _manifest(root)["cases"]]


def _pairs(items: list[list[str]]) -> Headers:
    return [(key, value) for key, value in items]


def _metadata(items: list[list[str]]) -> list[tuple[str, str | bytes]]:
    # gRPC binary metadata ("-bin" keys) is stored as base64 in the manifest.
    return [(k, base64.b64decode(v) if k.endswith("-bin") else v) for k, v in items]


def load_case(name: str, root: Path = EXTPROC_VECTORS) -> ExtProcCase:
    entry = next((e for e in _manifest(root)["cases"] if e["name"] == name), None)
    if entry is None:
        raise KeyError(f"no ext_proc vector {name!r}; known: {', '.join(case_names(root))}")
    ext_proc, client, tap = entry["ext_proc"], dict(entry["client"]), entry["tap"]
    for key in ("request_headers", "response_headers", "response_trailers"):
        client[key] = _pairs(client[key])
    return ExtProcCase(
        name=name,
        listener=entry["listener"],
        case=entry["case"],
        description=entry["description"],
        metadata=_metadata(ext_proc["metadata"]),
        messages=length_delimited(read_fixture(root / ext_proc["file"])),
        sequence=ext_proc["sequence"],
        end=StreamEnd(**ext_proc["end"]),
        client=ClientView(**client),
        tap_path=None if tap is None else root / tap["file"],
    )


def load_all(root: Path = EXTPROC_VECTORS) -> list[ExtProcCase]:
    return [load_case(name, root) for name in case_names(root)]

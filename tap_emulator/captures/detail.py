"""A transaction as a person reads it, in structured form: request line, headers, the body
classified (text, JSON pretty-printed, binary as a hex dump, gRPC as its length-prefixed
messages, decoded by schema or raw), trailers, and notes on what is missing, truncated or
redacted. The text renderer (`show`) and a web page's detail view draw the same tree;
`TransactionView.to_dict()` is its JSON form."""

from __future__ import annotations

import datetime as dt
import gzip
import http
import json
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

from google.protobuf.descriptor import Descriptor

from tap_emulator.captures.exchange import Exchange, HeaderField, HttpMessage
from tap_emulator.captures.model import Missing, Transaction
from tap_emulator.captures.protowire import (
    ProtoDescriptors,
    RawField,
    decode_raw,
    printable_text,
)

DEFAULT_MAX_SHOWN_BYTES = 64 * 1024
_GRPC_HEADER_BYTES = 5
_HEX_ROW_BYTES = 16
_MAX_HEX_BYTES = 4096  # a hex dump is 4x the bytes: past this a person wants the HAR or pcap


@dataclass(frozen=True, slots=True)
class HeaderView:
    name: str
    value: str
    redacted: bool


@dataclass(slots=True)
class GrpcMessageView:
    """One length-prefixed gRPC message of a body."""

    index: int
    compressed: bool
    declared_bytes: int  # what its prefix announced
    captured_bytes: int  # what the capture holds (less when the proxy cut the body)
    type_name: str | None = None  # set when decoded with a schema
    json: str | None = None
    fields: tuple[RawField, ...] | None = None  # without a schema: the raw fields
    hex_lines: list[str] = field(default_factory=list)  # when neither decodes
    note: str | None = None


@dataclass(slots=True)
class BodyView:
    """A body: `kind` is none (not recorded), empty, text, json, grpc or binary."""

    kind: str
    size_bytes: int = 0
    truncated: bool = False
    declared_bytes: int | None = None  # content-length, where sent
    content_type: str | None = None
    text: str | None = None
    hex_lines: list[str] = field(default_factory=list)
    hidden_bytes: int = 0  # beyond what is shown
    grpc_messages: list[GrpcMessageView] = field(default_factory=list)


@dataclass(slots=True)
class MessageView:
    side: str  # request or response
    recorded: bool
    start_line: str
    time: str | None
    headers: list[HeaderView]
    body: BodyView
    trailers: list[HeaderView]


@dataclass(slots=True)
class TransactionView:
    title: str
    summary: dict[str, Any]
    request: MessageView
    response: MessageView
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hex_dump(data: bytes) -> list[str]:
    """`hexdump -C`-style rows: offset, 16 bytes in hex, the printable ones as text."""
    rows = []
    for offset in range(0, len(data), _HEX_ROW_BYTES):
        row = data[offset : offset + _HEX_ROW_BYTES]
        left = " ".join(f"{byte:02x}" for byte in row[:8])
        right = " ".join(f"{byte:02x}" for byte in row[8:])
        shown = "".join(chr(byte) if 0x20 <= byte < 0x7F else "." for byte in row)
        rows.append(f"{offset:08x}  {left:<23}  {right:<23}  |{shown}|")
    return rows


def _headers(fields: list[HeaderField] | None) -> list[HeaderView]:
    return [HeaderView(item.name, item.value, item.redacted) for item in fields or []]


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    moment = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _int(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def _decompress(data: bytes, encoding: str | None) -> bytes | None:
    try:
        if encoding == "gzip":
            return gzip.decompress(data)
        if encoding == "deflate":
            return zlib.decompress(data)
    except (OSError, zlib.error, EOFError):
        return None
    return None


def _grpc_message(
    index: int,
    header: bytes,
    payload: bytes,
    schema: Descriptor | None,
    encoding: str | None,
) -> GrpcMessageView:
    declared = int.from_bytes(header[1:], "big")
    view = GrpcMessageView(index, bool(header[0]), declared, len(payload))
    if len(payload) < declared:
        view.note = f"cut short: {len(payload)} of {declared} bytes captured"
        view.hex_lines = hex_dump(payload)
        return view
    if view.compressed:
        plain = _decompress(payload, encoding)
        if plain is None:
            view.note = f"compressed ({encoding or 'unknown encoding'}); shown as captured"
            view.hex_lines = hex_dump(payload)
            return view
        payload = plain
        view.note = f"compressed ({encoding}); shown decompressed, {len(plain)} bytes"
    if schema is not None:
        try:
            view.json = ProtoDescriptors.to_json(schema, payload)
            view.type_name = schema.full_name
            return view
        except ValueError as exc:
            view.note = str(exc)
    view.fields = decode_raw(payload)
    if view.fields is None:
        view.hex_lines = hex_dump(payload)
    return view


def _grpc_messages(
    data: bytes, truncated: bool, schema: Descriptor | None, encoding: str | None
) -> list[GrpcMessageView] | None:
    """The length-prefixed messages of a gRPC body, or None if it is not framed so."""
    messages: list[GrpcMessageView] = []
    offset = 0
    while offset < len(data):
        header = data[offset : offset + _GRPC_HEADER_BYTES]
        if len(header) < _GRPC_HEADER_BYTES:
            return messages if truncated and messages else None
        if header[0] not in (0, 1):
            return None
        declared = int.from_bytes(header[1:], "big")
        start = offset + _GRPC_HEADER_BYTES
        payload = data[start : start + declared]
        if len(payload) < declared and not truncated:
            return None
        messages.append(_grpc_message(len(messages) + 1, header, payload, schema, encoding))
        offset = start + declared
    return messages


@dataclass(frozen=True, slots=True)
class _BodyContext:
    content_type: str | None
    grpc: bool
    schema: Descriptor | None
    encoding: str | None
    max_shown_bytes: int


def _body(message: HttpMessage, context: _BodyContext) -> BodyView:
    if message.headers is None and not message.chunks:
        return BodyView("none")
    data = message.body
    view = BodyView(
        "empty",
        size_bytes=len(data),
        truncated=message.truncated,
        declared_bytes=_int(message.header("content-length")),
        content_type=context.content_type,
    )
    if not data:
        return view
    if context.grpc:
        found = _grpc_messages(data, view.truncated, context.schema, context.encoding)
        if found is not None:
            view.kind = "grpc"
            view.grpc_messages = found
            return view
    shown = data[: context.max_shown_bytes]
    view.hidden_bytes = len(data) - len(shown)
    text = printable_text(shown) if not view.hidden_bytes else _text_prefix(shown)
    if text is not None:
        pretty = _pretty_json(text) if not view.truncated and not view.hidden_bytes else None
        view.kind, view.text = ("json", pretty) if pretty is not None else ("text", text)
        return view
    view.kind = "binary"
    view.hex_lines = hex_dump(shown[:_MAX_HEX_BYTES])
    view.hidden_bytes = len(data) - len(shown[:_MAX_HEX_BYTES])
    return view


def _text_prefix(data: bytes) -> str | None:
    """Text of a prefix cut anywhere, even inside a UTF-8 sequence."""
    for cut in range(4):
        text = printable_text(data[: len(data) - cut])
        if text is not None:
            return text
    return None


def _pretty_json(text: str) -> str | None:
    stripped = text.strip()
    if not stripped or stripped[0] not in "{[":
        return None
    try:
        return json.dumps(json.loads(stripped), indent=2, ensure_ascii=False)
    except ValueError:
        return None


def _start_line(side: str, message: HttpMessage, transaction: Transaction) -> str:
    if message.headers is None:
        return "(not recorded)"
    if side == "request":
        method = message.header(":method") or "?"
        path = message.header(":path") or "?"
        return f"{method} {path} {transaction.http_version or ''}".rstrip()
    status = message.header(":status") or "?"
    try:
        return f"{status} {http.HTTPStatus(int(status)).phrase}"
    except ValueError:
        return status


def _message_view(
    side: str, message: HttpMessage, transaction: Transaction, context: _BodyContext
) -> MessageView:
    return MessageView(
        side=side,
        recorded=message.headers is not None or bool(message.chunks),
        start_line=_start_line(side, message, transaction),
        time=_iso(message.headers_time),
        headers=_headers(message.headers),
        body=_body(message, context),
        trailers=_headers(message.trailers),
    )


_MISSING_TEXT = {
    Missing.REQUEST: "the proxy recorded no request: it answered before it had parsed one "
    "(Envoy does so for requests it rejects)",
    Missing.REQUEST_HEADERS: "the request headers are missing: their file was not found",
    Missing.RESPONSE: "no response was recorded (not yet, cancelled, or its file is missing)",
}


def _notes(exchange: Exchange) -> list[str]:
    transaction = exchange.transaction
    notes = [_MISSING_TEXT[item] for item in transaction.missing if item in _MISSING_TEXT]
    for gap in transaction.sequence_gaps:
        numbers = str(gap.first) if gap.first == gap.last else f"{gap.first}-{gap.last}"
        notes.append(f"missing: file(s) {numbers} of {gap.stem} were not found")
    for side, message in (("request", exchange.request), ("response", exchange.response)):
        if message.truncated:
            declared = _int(message.header("content-length"))
            of = f" of {declared}" if declared is not None else ""
            notes.append(
                f"{side} body truncated by the proxy's tap limit: "
                f"{len(message.body)} bytes captured{of}"
            )
    if transaction.redacted_headers:
        names = ", ".join(transaction.redacted_headers)
        notes.append(f"values redacted by the emulator: {names}")
    if transaction.evicted:
        notes.append("closed early to keep memory bounded: later pieces appear separately")
    notes.extend(f"could not read again: {problem}" for problem in exchange.problems)
    return notes


def _title(transaction: Transaction) -> str:
    parts = [
        transaction.method or "-",
        transaction.authority if transaction.authority is not None else "-",
        transaction.path or "-",
        "->",
        str(transaction.status) if transaction.status is not None else "no response",
    ]
    if transaction.grpc_status is not None:
        parts.append(f"grpc-status {transaction.grpc_status}")
    return " ".join(parts)


def describe(
    exchange: Exchange,
    descriptors: ProtoDescriptors | None = None,
    max_shown_bytes: int = DEFAULT_MAX_SHOWN_BYTES,
) -> TransactionView:
    """The structured view of one loaded transaction."""
    transaction = exchange.transaction
    grpc_path = exchange.request.header(":path") or ""
    schemas = descriptors.message_types(grpc_path) if descriptors is not None else None
    request_content = exchange.request.header("content-type")
    response_content = exchange.response.header("content-type") or request_content
    grpc = (request_content or "").startswith("application/grpc")
    request_type = schemas[0] if schemas else None
    response_type = schemas[1] if schemas else None
    request_context = _BodyContext(
        request_content,
        grpc,
        request_type,
        exchange.request.header("grpc-encoding"),
        max_shown_bytes,
    )
    response_context = _BodyContext(
        response_content,
        grpc,
        response_type,
        exchange.response.header("grpc-encoding"),
        max_shown_bytes,
    )
    return TransactionView(
        title=_title(transaction),
        summary=transaction.to_dict(),
        request=_message_view("request", exchange.request, transaction, request_context),
        response=_message_view("response", exchange.response, transaction, response_context),
        notes=_notes(exchange),
    )

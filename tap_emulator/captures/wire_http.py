"""The bytes a transaction would have had on the wire: HTTP/1.1 messages, or an HTTP/2
connection with prior knowledge (h2c: preface, SETTINGS, HPACK-encoded HEADERS, DATA,
trailers as HEADERS with END_STREAM), built from what the tap recorded.

What cannot be as recorded is rewritten, and said so in `Conversation.rewrites`: a body
the proxy truncated is sent as captured, with `content-length` set to what is sent; an
HTTP/1.1 body without a length is sent chunked (Envoy drops `transfer-encoding` from what it
records), one chunk per recorded chunk, with trailers in the last chunk; HTTP/2 leaves out
the connection-specific headers it forbids and orders pseudo-headers first.

HPACK: every field is a literal without indexing (sensitive ones: never indexed), with no
Huffman coding. That is valid HPACK (RFC 7541 6.2) that any decoder reads, and it keeps the
encoder a dozen lines; compression does not matter in a synthesized capture.
"""

from __future__ import annotations

import http
import struct
from dataclasses import dataclass, field

from tap_emulator.captures.exchange import Exchange, HeaderField, HttpMessage

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _SETTINGS, _WINDOW_UPDATE, _CONTINUATION = 0x0, 0x1, 0x4, 0x8, 0x9
_END_STREAM, _END_HEADERS, _ACK = 0x1, 0x4, 0x1
_SETTINGS_INITIAL_WINDOW_SIZE = 0x4
_MAX_WINDOW = 0x7FFFFFFF
_DEFAULT_WINDOW = 65535
_MAX_FRAME_BYTES = 16384
_STREAM = 1
_H2_FORBIDDEN = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host"}
)
_FRAMING = frozenset({"content-length", "transfer-encoding"})
_PSEUDO_ORDER = {":method": 0, ":scheme": 1, ":authority": 2, ":path": 3, ":status": 0}


@dataclass(frozen=True, slots=True)
class Write:
    """Bytes one side sends at once."""

    from_client: bool
    data: bytes


@dataclass(slots=True)
class Conversation:
    protocol: str  # HTTP/1.1 or HTTP/2
    writes: list[Write] = field(default_factory=list)
    rewrites: list[str] = field(default_factory=list)


# --- HPACK (literals only) --------------------------------------------------------------


def hpack_integer(value: int, prefix_bits: int, first_byte_flags: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte_flags | value])
    out = bytearray([first_byte_flags | limit])
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hpack_string(data: bytes) -> bytes:
    return hpack_integer(len(data), 7, 0x00) + data


def hpack_block(headers: list[tuple[bytes, bytes, bool]]) -> bytes:
    """A header block of (name, value, sensitive) fields, each a literal with a new name."""
    block = bytearray()
    for name, value, sensitive in headers:
        block.append(0x10 if sensitive else 0x00)  # never indexed / without indexing
        block += _hpack_string(name) + _hpack_string(value)
    return bytes(block)


# --- HTTP/2 frames ----------------------------------------------------------------------


def _frame_header(length: int, frame_type: int, flags: int, stream: int) -> bytes:
    return length.to_bytes(3, "big") + struct.pack("!BBI", frame_type, flags, stream)


def _frame(frame_type: int, flags: int, stream: int, payload: bytes) -> bytes:
    return _frame_header(len(payload), frame_type, flags, stream) + payload


def _headers_frames(block: bytes, end_stream: bool) -> bytes:
    pieces = [block[i : i + _MAX_FRAME_BYTES] for i in range(0, len(block), _MAX_FRAME_BYTES)]
    pieces = pieces or [b""]
    out = bytearray()
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        flags = _END_HEADERS if last else 0
        if index == 0:
            out += _frame(_HEADERS, flags | (_END_STREAM if end_stream else 0), _STREAM, piece)
        else:
            out += _frame(_CONTINUATION, flags, _STREAM, piece)
    return bytes(out)


def _data_frames(data: bytes, end_stream: bool) -> bytes:
    out = bytearray()
    pieces = [data[i : i + _MAX_FRAME_BYTES] for i in range(0, len(data), _MAX_FRAME_BYTES)]
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        out += _frame(_DATA, _END_STREAM if end_stream and last else 0, _STREAM, piece)
    return bytes(out)


def _connection_start() -> bytes:
    # Windows as large as allowed up front, so that no body needs WINDOW_UPDATEs later.
    settings = struct.pack("!HI", _SETTINGS_INITIAL_WINDOW_SIZE, _MAX_WINDOW)
    return _frame(_SETTINGS, 0, 0, settings) + _frame(
        _WINDOW_UPDATE, 0, 0, struct.pack("!I", _MAX_WINDOW - _DEFAULT_WINDOW)
    )


def _h2_fields(fields: list[HeaderField], rewrites: list[str], side: str) -> bytes:
    kept = [item for item in fields if item.name not in _H2_FORBIDDEN]
    if item_names := sorted({item.name for item in fields} & _H2_FORBIDDEN):
        rewrites.append(f"{side}: left out for HTTP/2: {', '.join(item_names)}")
    pseudo = sorted(
        (item for item in kept if item.name.startswith(":")),
        key=lambda item: _PSEUDO_ORDER.get(item.name, 9),
    )
    regular = [item for item in kept if not item.name.startswith(":")]
    return hpack_block([(item.name.encode(), item.raw, item.redacted) for item in pseudo + regular])


def _with_length(
    fields: list[HeaderField], sent: int, side: str, rewrites: list[str]
) -> list[HeaderField]:
    """`fields` with content-length saying `sent` where it said something else."""
    adjusted = []
    for item in fields:
        if item.name == "content-length" and item.value.strip() != str(sent):
            rewrites.append(
                f"{side}: content-length {item.value} -> {sent} (the proxy kept {sent} bytes)"
            )
            item = HeaderField(item.name, str(sent), str(sent).encode(), item.redacted)
        adjusted.append(item)
    return adjusted


def h2_conversation(exchange: Exchange) -> Conversation:
    """The exchange as one HTTP/2 stream (id 1) on a fresh h2c connection."""
    talk = Conversation("HTTP/2")
    writes: list[Write] = [
        Write(True, H2_PREFACE + _connection_start()),
        Write(False, _connection_start() + _frame(_SETTINGS, _ACK, 0, b"")),
        Write(True, _frame(_SETTINGS, _ACK, 0, b"")),
    ]
    sides = {"request": exchange.request, "response": exchange.response}
    for event in exchange.events:
        message = sides[event.side]
        from_client = event.side == "request"
        if message.headers is None:
            continue
        ends = _ends(message, event.part, event.chunk)
        if event.part == "headers":
            fields = _with_length(message.headers, len(message.body), event.side, talk.rewrites)
            block = _h2_fields(fields, talk.rewrites, event.side)
            writes.append(Write(from_client, _headers_frames(block, ends)))
        elif event.part == "chunk":
            data = message.chunks[event.chunk].data
            if data or ends:
                writes.append(Write(from_client, _data_frames(data or b"", ends)))
        else:
            block = _h2_fields(message.trailers or [], talk.rewrites, f"{event.side} trailers")
            writes.append(Write(from_client, _headers_frames(block, True)))
    talk.writes = writes
    return talk


def _ends(message: HttpMessage, part: str, chunk: int) -> bool:
    """Whether this part is the last of its side (and so carries END_STREAM)."""
    if message.trailers:
        return part == "trailers"
    last_chunk = max((i for i, c in enumerate(message.chunks) if c.data), default=None)
    if part == "headers":
        return last_chunk is None
    return part == "chunk" and chunk == last_chunk


# --- HTTP/1.1 ---------------------------------------------------------------------------


def _h1_head(start_line: str, fields: list[HeaderField]) -> bytes:
    lines = [start_line.encode("latin-1", errors="replace")]
    lines.extend(item.name.encode() + b": " + item.raw for item in fields)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _h1_framed(
    message: HttpMessage, side: str, rewrites: list[str], start_line: str, extra: list[HeaderField]
) -> tuple[bytes, list[bytes], bytes]:
    """Head, body pieces and end of one HTTP/1.1 message."""
    fields = extra + [item for item in message.headers or [] if not item.name.startswith(":")]
    body = message.body
    chunked_recorded = any(
        item.name == "transfer-encoding" and "chunked" in item.value.lower() for item in fields
    )
    has_length = any(item.name == "content-length" for item in fields)
    if message.trailers or chunked_recorded or (body and not has_length):
        if not chunked_recorded:
            rewrites.append(f"{side}: sent chunked (the tap does not record the framing)")
        fields = [item for item in fields if item.name not in _FRAMING]
        fields.append(HeaderField("transfer-encoding", "chunked", b"chunked", False))
        pieces = [
            f"{len(chunk.data):x}\r\n".encode() + chunk.data + b"\r\n"
            for chunk in message.chunks
            if chunk.data
        ]
        trailer_lines = b"".join(
            item.name.encode() + b": " + item.raw + b"\r\n" for item in message.trailers or []
        )
        return _h1_head(start_line, fields), pieces, b"0\r\n" + trailer_lines + b"\r\n"
    fields = _with_length(fields, len(body), side, rewrites)
    return _h1_head(start_line, fields), [c.data for c in message.chunks if c.data], b""


def h1_conversation(exchange: Exchange) -> Conversation:
    """The exchange as an HTTP/1.1 request and response on one connection."""
    talk = Conversation("HTTP/1.1")
    request, response = exchange.request, exchange.response
    parts: dict[str, tuple[bytes, list[bytes], bytes]] = {}
    if request.headers is not None:
        method = request.header(":method") or "GET"
        path = request.header(":path") or "/"
        host = [
            HeaderField("host", item.value, item.raw, item.redacted)
            for item in request.headers
            if item.name == ":authority"
        ][:1]
        if any(item.name == "host" for item in request.headers):
            host = []
        parts["request"] = _h1_framed(
            request, "request", talk.rewrites, f"{method} {path} HTTP/1.1", host
        )
    if response.headers is not None:
        status = response.header(":status") or "0"
        try:
            reason = http.HTTPStatus(int(status)).phrase
        except ValueError:
            reason = ""
        parts["response"] = _h1_framed(
            response, "response", talk.rewrites, f"HTTP/1.1 {status} {reason}".rstrip(), []
        )
    for event in exchange.events:
        if event.side not in parts:
            continue
        head, pieces, end = parts[event.side]
        from_client = event.side == "request"
        if event.part == "headers":
            data = head + (b"" if pieces else end)
        elif event.part == "chunk":
            index = _nonempty_index(
                exchange.request if from_client else exchange.response, event.chunk
            )
            if index is None:
                continue
            last = index == len(pieces) - 1
            data = pieces[index] + (end if last else b"")
        else:
            continue  # HTTP/1.1 trailers travel in the last chunk
        talk.writes.append(Write(from_client, data))
    return talk


def _nonempty_index(message: HttpMessage, chunk: int) -> int | None:
    """The position of chunk `chunk` among the message's non-empty chunks."""
    if not message.chunks[chunk].data:
        return None
    return sum(1 for c in message.chunks[:chunk] if c.data)


def conversation(exchange: Exchange, version: str = "auto") -> Conversation:
    """`version` auto: HTTP/2 where the transaction was HTTP/2 (gRPC), HTTP/1.1 otherwise;
    `2` or `1.1`: that one whatever was recorded."""
    recorded = exchange.transaction.http_version
    if version == "2" or (version == "auto" and recorded == "HTTP/2"):
        talk = h2_conversation(exchange)
    else:
        talk = h1_conversation(exchange)
    if recorded is None:
        talk.rewrites.insert(0, f"HTTP version not recorded; written as {talk.protocol}")
    elif recorded != talk.protocol:
        talk.rewrites.insert(0, f"recorded as {recorded}; written as {talk.protocol}")
    return talk

"""The synthesized wire bytes, read back by parsers nobody here wrote: `hpack` and
`hyperframe` (python-hyper) for HTTP/2, `h11` for HTTP/1.1."""

from __future__ import annotations

from pathlib import Path

import h11
import hpack
from hyperframe.frame import (
    DataFrame,
    Frame,
    HeadersFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tap_emulator.captures.exchange import Exchange, load_exchange
from tap_emulator.captures.reader import read_transactions
from tap_emulator.captures.wire_http import (
    H2_PREFACE,
    Conversation,
    conversation,
    h1_conversation,
    h2_conversation,
    hpack_block,
)


def exchange_of(path: Path) -> Exchange:
    [transaction] = list(read_transactions([path]))
    return load_exchange(transaction)


def frames(data: bytes) -> list[Frame]:
    found = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        found.append(frame)
        data = data[9 + length :]
    return found


def side(talk: Conversation, from_client: bool) -> bytes:
    return b"".join(write.data for write in talk.writes if write.from_client == from_client)


def test_hpack_literals_decode_with_python_hyper_and_keep_sensitive_ones_unindexed() -> None:
    fields = [(b":method", b"GET"), (b"x-long", b"v" * 300), (b"authorization", b"REDACTED")]
    block = hpack_block([(name, value, name == b"authorization") for name, value in fields])
    decoded = hpack.Decoder().decode(block, raw=True)

    assert [(item[0], item[1]) for item in decoded] == fields
    assert isinstance(decoded[2], hpack.NeverIndexedHeaderTuple)


def test_a_grpc_exchange_becomes_one_h2_stream_with_trailers(vectors: Path) -> None:
    exchange = exchange_of(vectors / "buffered" / "grpc_unary_trailers.pb")
    talk = conversation(exchange)
    client, server = side(talk, True), side(talk, False)

    assert talk.protocol == "HTTP/2" and client.startswith(H2_PREFACE)
    client_frames = frames(client[len(H2_PREFACE) :])
    server_frames = frames(server)
    decoder = hpack.Decoder()
    [request_headers] = [f for f in client_frames if isinstance(f, HeadersFrame)]
    request = dict(decoder.decode(request_headers.data))
    assert request[":path"] == "/demo.Echo/Unary" and request[":method"] == "POST"
    [request_data] = [f for f in client_frames if isinstance(f, DataFrame)]
    assert request_data.data == exchange.request.body and "END_STREAM" in request_data.flags
    response_headers, trailers = [f for f in server_frames if isinstance(f, HeadersFrame)]
    assert dict(decoder.decode(response_headers.data))[":status"] == "200"
    assert dict(decoder.decode(trailers.data))["grpc-status"] == "0"
    assert "END_STREAM" in trailers.flags and "END_STREAM" not in response_headers.flags
    assert any(isinstance(f, SettingsFrame) for f in server_frames)
    assert any(isinstance(f, WindowUpdateFrame) for f in client_frames)


def test_h2_leaves_out_connection_headers_and_puts_pseudo_headers_first(vectors: Path) -> None:
    exchange = exchange_of(vectors / "buffered" / "h1_post_chunked_b3.pb")
    talk = h2_conversation(exchange)
    server_frames = frames(side(talk, False))
    [headers] = [f for f in server_frames if isinstance(f, HeadersFrame)]
    names = [name for name, _ in hpack.Decoder().decode(headers.data)]

    assert names[0] == ":status" and "connection" not in names
    assert any("left out for HTTP/2: connection" in note for note in talk.rewrites)


def test_an_h1_exchange_parses_with_h11_chunked_where_no_length_was_recorded(
    vectors: Path,
) -> None:
    exchange = exchange_of(vectors / "streamed" / "h1_post_chunked_b3.pb_length_delimited")
    talk = h1_conversation(exchange)

    server = h11.Connection(h11.SERVER)
    server.receive_data(side(talk, True))
    request = server.next_event()
    assert isinstance(request, h11.Request)
    assert (request.method, request.target) == (b"POST", b"/chunked")
    assert dict(request.headers)[b"host"] == exchange.request.header(":authority").encode()
    body = b""
    while not isinstance(event := server.next_event(), h11.EndOfMessage):
        assert isinstance(event, h11.Data)
        body += event.data
    assert body == exchange.request.body

    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="POST", target="/chunked", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(side(talk, False))
    response = client.next_event()
    assert isinstance(response, h11.Response) and response.status_code == 200
    received = b""
    while not isinstance(event := client.next_event(), h11.EndOfMessage):
        received += event.data  # type: ignore[union-attr]
    assert received == exchange.response.body
    assert any("sent chunked" in note for note in talk.rewrites)


def test_a_truncated_body_is_sent_as_captured_with_its_length_set_to_match(
    vectors: Path,
) -> None:
    exchange = exchange_of(vectors / "buffered" / "h1_post_large_b3.pb")
    talk = h1_conversation(exchange)
    server = h11.Connection(h11.SERVER)
    server.receive_data(side(talk, True))
    request = server.next_event()

    assert isinstance(request, h11.Request)
    assert dict(request.headers)[b"content-length"] == b"1024"
    data = server.next_event()
    assert isinstance(data, h11.Data) and data.data == exchange.request.body
    assert any("content-length 5000 -> 1024" in note for note in talk.rewrites)


def test_an_unknown_version_is_written_as_http1_and_says_so(vectors: Path) -> None:
    talk = conversation(exchange_of(vectors / "buffered" / "h1_get_b3.pb"))

    assert talk.protocol == "HTTP/1.1"
    assert talk.rewrites[0] == "HTTP version not recorded; written as HTTP/1.1"

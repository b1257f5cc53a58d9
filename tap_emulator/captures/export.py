"""Exports standard tools open: HAR 1.2 (browsers' devtools, HAR viewers) and pcapng
(Wireshark, tshark), one entry or one TCP connection per transaction, written as the
transactions stream by (memory does not grow with the capture).

HAR: a request or response the proxy did not record is written as HAR writers write a
failed request (status 0, empty fields) and the entry's comment says so; trailers, which
HAR has no place for, go in `_trailers`; timings are `wait` = request headers to response
headers where recorded, else 0 with a comment.

pcapng: each transaction is a TCP connection between the downstream addresses the tap
recorded (`downstream_connection`: remote = client, local = the proxy's listener), or,
where none were recorded, between documentation addresses: client 192.0.2.1 (TEST-NET-1,
RFC 5737) port 40000 + n, server 198.51.100.1 (TEST-NET-2) port 80. The first packet of each
connection carries a comment naming its files and what was rewritten.
"""

from __future__ import annotations

import base64
import datetime as dt
import http
import ipaddress
import json
from collections.abc import Iterable, Iterator
from typing import IO, Any, BinaryIO
from urllib.parse import parse_qsl, urlsplit

from tap_emulator import __version__
from tap_emulator.captures.detail import describe
from tap_emulator.captures.exchange import Exchange, HeaderField, HttpMessage, load_exchange
from tap_emulator.captures.model import Transaction
from tap_emulator.captures.pcapng import PcapngWriter, TcpSession
from tap_emulator.captures.protowire import printable_text
from tap_emulator.captures.wire_http import conversation

PLACEHOLDER_CLIENT = "192.0.2.1"
PLACEHOLDER_SERVER = "198.51.100.1"
PLACEHOLDER_CLIENT_PORT_BASE = 40000
PLACEHOLDER_SERVER_PORT = 80
_PORT_SPAN = 20000
# The TCP ports Wireshark's HTTP dissector takes by default (4.0); on others it finds
# HTTP/1.1 by its heuristic but not an h2c preface.
WIRESHARK_HTTP_PORTS = frozenset({80, 1900, 2710, 2869, 3128, 3132, 5985, 8080, 8088, 11371})
_MAX_PORTS_TOLD = 50
# Between a request and a response whose times were not recorded.
_UNRECORDED_WAIT_SECONDS = 0.001

# --- HAR --------------------------------------------------------------------------------


def _iso(seconds: float | None) -> str:
    moment = dt.datetime.fromtimestamp(seconds or 0.0, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _har_headers(fields: list[HeaderField] | None) -> list[dict[str, str]]:
    return [{"name": item.name, "value": item.value} for item in fields or []]


def _har_content(message: HttpMessage) -> dict[str, Any]:
    data = message.body
    content: dict[str, Any] = {
        "size": len(data),
        "mimeType": message.header("content-type") or "",
    }
    if data:
        text = printable_text(data)
        if text is not None:
            content["text"] = text
        else:
            content["text"] = base64.b64encode(data).decode()
            content["encoding"] = "base64"
    if message.truncated:
        content["comment"] = f"truncated by the proxy's tap limit: {len(data)} bytes captured"
    return content


def _url(request: HttpMessage) -> str:
    if request.headers is None:
        return ""
    scheme = request.header(":scheme") or "http"
    authority = request.header(":authority")
    if authority is None:
        authority = request.header("host") or ""
    return f"{scheme}://{authority}{request.header(':path') or ''}"


def _query(path: str | None) -> list[dict[str, str]]:
    if not path or "?" not in path:
        return []
    query = urlsplit(path).query
    return [{"name": name, "value": value} for name, value in parse_qsl(query, True)]


def _version(exchange: Exchange, http_version: str) -> str:
    """`http_version` auto: as recorded, else HTTP/1.1; `1.1` or `2`: that one."""
    if http_version != "auto":
        return "HTTP/2" if http_version == "2" else "HTTP/1.1"
    return exchange.transaction.http_version or "HTTP/1.1"


def _har_request(exchange: Exchange, http_version: str) -> dict[str, Any]:
    request = exchange.request
    entry: dict[str, Any] = {
        "method": request.header(":method") or "",
        "url": _url(request),
        "httpVersion": _version(exchange, http_version),
        "cookies": [],
        "headers": _har_headers(request.headers),
        "queryString": _query(request.header(":path")),
        "headersSize": -1,
        "bodySize": len(request.body) if request.headers is not None else -1,
    }
    if request.body:
        content = _har_content(request)
        post: dict[str, Any] = {"mimeType": content["mimeType"], "text": content["text"]}
        if content.get("encoding"):
            post["_encoding"] = content["encoding"]
        if request.truncated:
            post["comment"] = content["comment"]
        entry["postData"] = post
    if request.trailers:
        entry["_trailers"] = _har_headers(request.trailers)
    return entry


def _status_text(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _har_response(exchange: Exchange, http_version: str) -> dict[str, Any]:
    response = exchange.response
    status = exchange.transaction.status or 0
    entry: dict[str, Any] = {
        "status": status,
        "statusText": _status_text(status) if status else "",
        "httpVersion": _version(exchange, http_version),
        "cookies": [],
        "headers": _har_headers(response.headers),
        "content": _har_content(response),
        "redirectURL": response.header("location") or "",
        "headersSize": -1,
        "bodySize": len(response.body) if response.headers is not None else -1,
    }
    if response.trailers:
        entry["_trailers"] = _har_headers(response.trailers)
    return entry


def _har_comment(exchange: Exchange, http_version: str) -> str:
    notes = describe(exchange).notes
    if exchange.transaction.http_version is None:
        how = "assumed" if http_version == "auto" else "as asked"
        notes.append(f"HTTP version not recorded; {_version(exchange, http_version)} {how}")
    if exchange.transaction.duration_seconds is None:
        notes.append("timings not recorded")
    if exchange.transaction.time_source == "file_mtime":
        notes.append("startedDateTime is the file's modification time")
    return "; ".join(notes)


def har_entry(exchange: Exchange, http_version: str = "auto") -> dict[str, Any]:
    """One HAR 1.2 entry; `http_version` as `_version` takes it."""
    transaction = exchange.transaction
    wait_ms = (transaction.duration_seconds or 0.0) * 1000
    entry: dict[str, Any] = {
        "startedDateTime": _iso(transaction.time),
        "time": wait_ms,
        "request": _har_request(exchange, http_version),
        "response": _har_response(exchange, http_version),
        "cache": {},
        "timings": {"send": 0, "wait": wait_ms, "receive": 0},
    }
    if exchange.server is not None:
        entry["serverIPAddress"] = exchange.server.host
    if exchange.client is not None:
        entry["connection"] = f"{exchange.client.host}:{exchange.client.port}"
    comment = _har_comment(exchange, http_version)
    if comment:
        entry["comment"] = comment
    entry["_tapEmulator"] = {
        "key": transaction.key,
        "files": list(transaction.files),
        "trace_id": transaction.trace_id,
        "envoy_trace_id": transaction.envoy_trace_id_hex,
        "grpc_status": transaction.grpc_status,
        "missing": [str(item) for item in transaction.missing],
    }
    return entry


def write_har(exchanges: Iterable[Exchange], out: IO[str], http_version: str = "auto") -> int:
    """Write a HAR 1.2 log of `exchanges`, entry by entry; returns the number of entries."""
    creator = {"name": "tap-emulator", "version": __version__}
    out.write('{"log": {"version": "1.2", "creator": ' + json.dumps(creator))
    out.write(', "entries": [\n')
    count = 0
    for exchange in exchanges:
        if count:
            out.write(",\n")
        out.write(json.dumps(har_entry(exchange, http_version), ensure_ascii=False))
        count += 1
    out.write("\n]}}\n")
    return count


# --- pcapng -----------------------------------------------------------------------------


def _endpoints(
    exchange: Exchange, number: int, placeholders: bool
) -> tuple[tuple[str, int], tuple[str, int]]:
    client, server = exchange.client, exchange.server
    if client is not None and server is not None and not placeholders:
        try:
            same_family = (
                ipaddress.ip_address(client.host).version
                == ipaddress.ip_address(server.host).version
            )
        except ValueError:
            same_family = False
        if same_family:
            return (client.host, client.port), (server.host, server.port)
    port = PLACEHOLDER_CLIENT_PORT_BASE + number % _PORT_SPAN
    return (PLACEHOLDER_CLIENT, port), (PLACEHOLDER_SERVER, PLACEHOLDER_SERVER_PORT)


def _times(exchange: Exchange, number: int) -> tuple[float, float]:
    request_time = exchange.request.headers_time
    response_time = exchange.response.headers_time
    start = request_time or exchange.transaction.time or float(number)
    if response_time is None or response_time < start:
        response_time = start + _UNRECORDED_WAIT_SECONDS
    return start, response_time


def _pcap_comment(exchange: Exchange, protocol: str, rewrites: list[str], real: bool) -> str:
    transaction = exchange.transaction
    lines = [f"tap-emulator: {transaction.key} as {protocol}"]
    lines.append("files: " + " ".join(transaction.files))
    if not real:
        lines.append("addresses: documentation placeholders (none recorded, or asked for)")
    lines.extend(rewrites)
    lines.extend(f"missing: {item}" for item in transaction.missing)
    return "\n".join(lines)


class PcapExport:
    """Writes transactions to a pcapng file as they come, one TCP connection each."""

    def __init__(
        self, out: BinaryIO, placeholder_addresses: bool = False, http_version: str = "auto"
    ) -> None:
        self._writer = PcapngWriter(out, f"tap-emulator {__version__}")
        self._placeholders = placeholder_addresses
        self._version = http_version
        self.connections = 0
        # Server ports of HTTP/2 connections that Wireshark does not take for HTTP by itself.
        self.http2_ports: set[int] = set()

    @property
    def packets(self) -> int:
        return self._writer.packets

    def add(self, transaction: Transaction) -> None:
        self.write(load_exchange(transaction))

    def write(self, exchange: Exchange) -> None:
        self.connections += 1
        number = self.connections
        talk = conversation(exchange, self._version)
        client, server = _endpoints(exchange, number, self._placeholders)
        real = client[0] != PLACEHOLDER_CLIENT
        needs_decode_as = talk.protocol == "HTTP/2" and server[1] not in WIRESHARK_HTTP_PORTS
        if needs_decode_as and len(self.http2_ports) < _MAX_PORTS_TOLD:
            self.http2_ports.add(server[1])
        start, response_time = _times(exchange, number)
        isn = (1_000_000 + number * 7919) & 0xFFFFFFFF
        session = TcpSession(self._writer, client, server, start, (isn, isn ^ 0x5A5A5A5A))
        # The first data packet carries the comment: where HTTP starts in any view.
        session.comment_next(_pcap_comment(exchange, talk.protocol, talk.rewrites, real))
        for write in talk.writes:
            at = start if write.from_client else response_time
            session.send(write.from_client, write.data, at)
        session.close()


def write_pcapng(
    exchanges: Iterable[Exchange], out: BinaryIO, placeholder_addresses: bool = False
) -> int:
    """Write every exchange as its own TCP connection; returns the number written."""
    export = PcapExport(out, placeholder_addresses)
    for exchange in exchanges:
        export.write(exchange)
    return export.connections


def loaded(transactions: Iterable[Transaction]) -> Iterator[Exchange]:
    """Each transaction read again in full."""
    for transaction in transactions:
        yield load_exchange(transaction)

"""A small HTTP/1.1 client for Envoy's admin endpoint, on asyncio streams.

Two calls: `GET /server_info` (Envoy's own node identity) and `POST /tap`, whose response
never ends: Envoy keeps it open and writes each trace as it happens. Facts about Envoy
1.40 this relies on:
- the `/tap` response headers are sent only with the first trace, so a quiet Envoy says
  nothing after a successful attach;
- only one `/tap` stream may be attached; a second `POST /tap` is answered at once with
  400 "An attached /tap admin stream already exists. Detach it.";
- `POST /tap` without a body is answered 400 "/tap requires a JSON/YAML body" when nothing
  is attached, and with the "already exists" text while a stream is attached. That probe
  changes nothing, so it is how an attach is confirmed before any traffic flows.
Closing the connection detaches the stream.

An answer that no stock Envoy gives (a `/server_info` that is not JSON, too large, nested too
deeply, without a node) raises `MalformedAnswerError`: retrying would not help. A stock
Envoy 1.40's `/server_info` is about 125 KB, most of it the node's list of extensions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tap_emulator.captures.json_objects import json_weight
from tap_emulator.config import MiB, format_size

MAX_HEAD_BYTES = 64 * 1024
MAX_ERROR_BODY_BYTES = 64 * 1024
# 30 times a stock Envoy's; bounds by weight (length plus a cost per JSON value) what
# parsing it may take, as for traces.
MAX_SERVER_INFO_BYTES = 4 * MiB
SERVER_INFO_VALUE_COST_BYTES = 64
PIECE_BYTES = 64 * 1024
ALREADY_ATTACHED = "already exists"
_NEEDS_BODY = "requires a JSON/YAML body"
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")


class AdminError(Exception):
    """The admin endpoint could not be used (unreachable, or an unexpected answer)."""


class MalformedAnswerError(AdminError):
    """Envoy's admin endpoint answered as no stock Envoy does; retrying will not help."""


class TapRefusedError(AdminError):
    """Envoy refused `POST /tap` (another stream attached, unknown config id, bad config)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message

    @property
    def already_attached(self) -> bool:
        return ALREADY_ATTACHED in self.message


@dataclass(frozen=True, slots=True)
class AdminAddress:
    """Where Envoy's admin endpoint listens: `http://HOST:PORT[/prefix]`."""

    host: str
    port: int
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> AdminAddress:
        if "://" not in url:
            url = f"http://{url}"
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"the Envoy admin endpoint must be plain http://, got {url!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port in {url!r}: {exc}") from exc
        if not parts.hostname or port is None:
            raise ValueError(f"expected http://HOST:PORT, got {url!r}")
        return cls(parts.hostname, port, parts.path.rstrip("/"))

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"http://{self.authority}{self.prefix}"


@dataclass(slots=True)
class _Head:
    status: int
    reason: str
    headers: dict[str, str]

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()


async def _connect(
    address: AdminAddress, timeout_seconds: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.wait_for(
            asyncio.open_connection(address.host, address.port, limit=MAX_HEAD_BYTES),
            timeout_seconds,
        )
    except (OSError, TimeoutError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "timed out"
        raise AdminError(f"cannot connect to Envoy admin at {address}: {reason}") from exc


def _request(address: AdminAddress, method: str, path: str, body: bytes | None) -> bytes:
    lines = [
        f"{method} {address.prefix}{path} HTTP/1.1",
        f"Host: {address.authority}",
        "User-Agent: tap-emulator-relay",
        "Accept: */*",
    ]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head + (body or b"")


async def _read_head(reader: asyncio.StreamReader) -> _Head:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise AdminError("Envoy admin closed the connection before answering") from exc
    except asyncio.LimitOverrunError as exc:
        raise AdminError("Envoy admin answered with an oversized header block") from exc
    status_line, *header_lines = raw.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise AdminError(f"not an HTTP response from Envoy admin: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return _Head(int(parts[1]), parts[2] if len(parts) > 2 else "", headers)


async def _pieces(reader: asyncio.StreamReader, head: _Head) -> AsyncIterator[bytes]:
    """The response body in pieces of at most PIECE_BYTES, de-chunked; ends at its end."""
    if not head.chunked:
        length = head.headers.get("content-length", "-1")
        if not length.lstrip("-").isdigit() or int(length) < -1:
            raise AdminError(f"Envoy admin sent a malformed content-length: {length[:40]!r}")
        remaining = int(length)
        while remaining != 0:
            piece = await reader.read(PIECE_BYTES if remaining < 0 else min(remaining, PIECE_BYTES))
            if not piece:
                if remaining > 0:
                    raise AdminError("Envoy admin closed the connection mid-response")
                return
            remaining -= len(piece) if remaining > 0 else 0
            yield piece
        return
    while True:
        try:
            size_line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as exc:
            raise AdminError("Envoy admin sent a malformed chunk") from exc
        except asyncio.IncompleteReadError as exc:
            raise AdminError("Envoy admin closed the connection mid-stream") from exc
        size_text = size_line.split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise AdminError(f"Envoy admin sent a malformed chunk size: {size_text[:40]!r}")
        size = int(size_text, 16)
        if size == 0:
            with contextlib.suppress(asyncio.IncompleteReadError):
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
            return
        while size:
            piece = await reader.read(min(size, PIECE_BYTES))
            if not piece:
                raise AdminError("Envoy admin closed the connection mid-chunk")
            size -= len(piece)
            yield piece
        try:
            await reader.readexactly(2)
        except asyncio.IncompleteReadError as exc:
            raise AdminError("Envoy admin closed the connection mid-stream") from exc


async def _read_all(reader: asyncio.StreamReader, head: _Head, limit: int) -> bytes:
    body = bytearray()
    async for piece in _pieces(reader, head):
        body += piece
        if len(body) > limit:
            raise MalformedAnswerError(f"the answer is larger than {format_size(limit)}")
    return bytes(body)


async def _exchange(
    address: AdminAddress,
    method: str,
    path: str,
    body: bytes | None,
    timeout_seconds: float,
    limit: int,
) -> tuple[_Head, bytes]:
    reader, writer = await _connect(address, timeout_seconds)
    try:
        writer.write(_request(address, method, path, body))
        head = await asyncio.wait_for(_read_head(reader), timeout_seconds)
        return head, await asyncio.wait_for(_read_all(reader, head, limit), timeout_seconds)
    except TimeoutError as exc:
        raise AdminError(f"Envoy admin at {address} did not answer {path} in time") from exc
    except OSError as exc:
        raise AdminError(f"Envoy admin at {address} failed during {path}: {exc}") from exc
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def parse_server_info(body: bytes) -> dict[str, Any]:
    """The node (id, cluster, metadata...) in a `/server_info` body; raises
    MalformedAnswerError saying what is wrong with it."""
    weight = json_weight(body, SERVER_INFO_VALUE_COST_BYTES)
    if weight > MAX_SERVER_INFO_BYTES:
        raise MalformedAnswerError(
            f"it weighs {format_size(weight)} once parsed (its {len(body)} bytes plus "
            f"{SERVER_INFO_VALUE_COST_BYTES} per JSON value), more than "
            f"{format_size(MAX_SERVER_INFO_BYTES)}"
        )
    try:
        info = json.loads(body)
    except RecursionError:
        raise MalformedAnswerError("it is JSON nested too deeply to read") from None
    except ValueError as exc:
        raise MalformedAnswerError(f"it is not JSON: {exc}") from exc
    if not isinstance(info, dict):
        raise MalformedAnswerError(f"it is a JSON {type(info).__name__}, not an object")
    node = info.get("node")
    if not isinstance(node, dict):
        shown = "missing" if node is None else f"a JSON {type(node).__name__}, not an object"
        raise MalformedAnswerError(f"its node is {shown}")
    return node


async def server_node(address: AdminAddress, timeout_seconds: float = 10.0) -> dict[str, Any]:
    """Envoy's node as `GET /server_info` reports it; MalformedAnswerError names what is
    wrong with an answer no stock Envoy gives."""
    path = "/server_info"
    try:
        head, body = await _exchange(
            address, "GET", path, None, timeout_seconds, MAX_SERVER_INFO_BYTES
        )
        if head.status != 200:
            text = body[:200].decode("utf-8", "replace").strip()
            raise AdminError(f"Envoy admin answered {path} with HTTP {head.status}: {text}")
        return parse_server_info(body)
    except MalformedAnswerError as exc:
        raise MalformedAnswerError(f"Envoy admin's {path} at {address}: {exc}") from exc


async def tap_attached(address: AdminAddress, timeout_seconds: float = 5.0) -> bool:
    """True if some `/tap` stream is attached to this Envoy (the body-less probe)."""
    head, body = await _exchange(
        address, "POST", "/tap", None, timeout_seconds, MAX_ERROR_BODY_BYTES
    )
    text = body.decode("utf-8", "replace")
    if ALREADY_ATTACHED in text:
        return True
    if _NEEDS_BODY in text:
        return False
    raise AdminError(f"unexpected answer to the /tap probe: HTTP {head.status}: {text[:200]}")


class TapStream:
    """One attached `/tap` stream: the response body, de-chunked, in bounded pieces."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: asyncio.Task[_Head],
        confirmed: bool,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._head = head
        self.confirmed = confirmed

    async def pieces(self) -> AsyncIterator[bytes]:
        try:
            head = await self._head
        except OSError as exc:
            raise AdminError(f"Envoy admin connection failed: {exc}") from exc
        if head.status != 200:
            body = await _read_all(self._reader, head, MAX_ERROR_BODY_BYTES)
            raise TapRefusedError(head.status, body.decode("utf-8", "replace").strip())
        try:
            async for piece in _pieces(self._reader, head):
                yield piece
        except OSError as exc:
            raise AdminError(f"Envoy admin connection failed: {exc}") from exc

    async def close(self) -> None:
        """Close the connection; Envoy then detaches the stream."""
        self._head.cancel()
        self._writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await self._writer.wait_closed()


async def attach_tap(
    address: AdminAddress,
    body: bytes,
    timeout_seconds: float = 10.0,
    confirm_seconds: float = 5.0,
    probe_interval_seconds: float = 0.05,
) -> TapStream:
    """POST /tap and return once Envoy has the stream attached (or refused it: raises).

    Success is silent on the wire until the first trace, so attachment is confirmed with
    the body-less probe. An answer on our own connection settles it either way."""
    reader, writer = await _connect(address, timeout_seconds)
    writer.write(_request(address, "POST", "/tap", body))
    head = asyncio.ensure_future(_read_head(reader))
    stream = TapStream(reader, writer, head, confirmed=False)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + confirm_seconds
    try:
        await writer.drain()
        while loop.time() < deadline:
            await asyncio.wait({head}, timeout=probe_interval_seconds)
            if head.done():
                if head.exception() is None and head.result().status == 200:
                    stream.confirmed = True
                    return stream
                # A refusal (or a broken connection): pieces() raises it with its reason.
                async for _ in stream.pieces():
                    break
                raise AdminError("Envoy admin answered /tap without a stream")
            if await tap_attached(address, timeout_seconds):
                # Ours, unless our own connection is answering with a refusal right now.
                await asyncio.wait({head}, timeout=probe_interval_seconds)
                if not head.done() or (head.exception() is None and head.result().status == 200):
                    stream.confirmed = True
                    return stream
        return stream  # not confirmed: the caller logs it and reads on
    except BaseException:
        await stream.close()
        raise

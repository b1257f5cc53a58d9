"""A scripted Envoy admin endpoint for relay tests: real HTTP/1.1 on 127.0.0.1, speaking
`GET /server_info` and `POST /tap` as Envoy 1.40 does (one attached stream at a time, the
body-less probe, response headers sent with the first trace, then chunks)."""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

from tests.helpers.paths import VECTORS

ADMIN_SAMPLE = VECTORS / "admin" / "admin_tap_streaming_json_body_as_string.txt"
NAMESPACE = "relay-ns"
NODE: dict[str, Any] = {
    "id": f"sidecar~10.1.2.3~client-5d8.{NAMESPACE}~{NAMESPACE}.svc.cluster.local",
    "cluster": f"client.{NAMESPACE}",
    "metadata": {"NAMESPACE": NAMESPACE, "WORKLOAD_NAME": "client"},
    "user_agent_name": "envoy",
    "extensions": [{"name": "envoy.filters.http.tap", "category": "envoy.filters.http"}],
    "a_field_from_a_future_envoy": {"x": 1},
}

Script = Callable[[int, "ChunkWriter"], Awaitable[None]]
ServerInfo = Callable[[int], bytes]


class ChunkWriter:
    """Writes a /tap response as Envoy does: headers with the first data, then chunks."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._started = False
        self.held_back = False  # a write is waiting now: the reader is not reading

    async def send(self, data: bytes) -> None:
        if not self._started:
            self._writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            self._started = True
        self._writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        _, high_water = self._writer.transport.get_write_buffer_limits()
        # Above the high water mark the kernel's socket buffers are full and drain() waits.
        self.held_back = self._writer.transport.get_write_buffer_size() > high_water
        try:
            await self._writer.drain()
        finally:
            self.held_back = False

    async def send_in_pieces(self, data: bytes, rng: random.Random, most: int = 40) -> None:
        position = 0
        while position < len(data):
            size = rng.randint(1, most)
            await self.send(data[position : position + size])
            position += size

    def close(self) -> None:
        self._writer.close()


def server_info_of(node: Any) -> bytes:
    """A `/server_info` body around `node` (any JSON value, for malformed answers too)."""
    return json.dumps({"state": "LIVE", "node": node}).encode()


class FakeEnvoyAdmin:
    """Envoy's admin endpoint as far as the relay uses it. `server_info(call)` may answer
    the n-th `/server_info` (from 1) with any body; by default it reports `node`."""

    def __init__(
        self,
        script: Script,
        node: dict[str, Any] | None = None,
        server_info: ServerInfo | None = None,
        attached: bool = False,
    ) -> None:
        self.script = script
        self.node = node or NODE
        self.server_info = server_info or (lambda call: server_info_of(self.node))
        self.tap_bodies: list[dict[str, Any]] = []
        self.server_info_calls = 0
        self.attached = attached
        self.detached = asyncio.Event()
        self.writers: list[ChunkWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _answer(
        self, writer: asyncio.StreamWriter, status: str, body: bytes, kind: str = "text/plain"
    ) -> None:
        writer.write(
            f"HTTP/1.1 {status}\r\ncontent-type: {kind}\r\n"
            f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            request_line, *lines = head.split("\r\n")
            method, path, _ = request_line.split(" ")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if method == "GET" and path == "/server_info":
                self.server_info_calls += 1
                answer = self.server_info(self.server_info_calls)
                await self._answer(writer, "200 OK", answer, "application/json")
            elif method == "POST" and path == "/tap" and (self.attached or not body):
                text = (
                    b"An attached /tap admin stream already exists. Detach it."
                    if self.attached
                    else b"/tap requires a JSON/YAML body"
                )
                await self._answer(writer, "400 Bad Request", text)
            elif method == "POST" and path == "/tap":
                self.attached = True
                self.detached.clear()
                self.tap_bodies.append(json.loads(body))
                chunks = ChunkWriter(writer)
                self.writers.append(chunks)
                try:
                    await self.script(len(self.tap_bodies), chunks)
                    await reader.read()  # until the relay closes: that detaches
                finally:
                    self.attached = False
                    self.detached.set()
            else:
                await self._answer(writer, "404 Not Found", b"")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def buffered_trace_json(index: int, body_bytes: int, trace_id: str) -> bytes:
    """A buffered trace as Envoy prints it (pretty, proto names), with a response body of
    `body_bytes` random bytes, base64 as `JSON_BODY_AS_BYTES` prints it."""
    document = {
        "http_buffered_trace": {
            "request": {
                "headers": [
                    {"key": ":authority", "value": "big.example"},
                    {"key": "x-b3-traceid", "value": trace_id},
                    {"key": "x-index", "value": str(index)},
                ]
            },
            "response": {
                "headers": [{"key": ":status", "value": "200"}],
                "body": {"as_bytes": base64.b64encode(random.randbytes(body_bytes)).decode()},
            },
        }
    }
    return json.dumps(document, indent=1).encode()


def admin_sample_objects() -> list[bytes]:
    """The objects of a real Envoy admin /tap stream (12 streamed segments: 7 of an HTTP/1.1
    POST, then 5 of a gRPC call), each exactly as Envoy wrote it."""
    text = ADMIN_SAMPLE.read_text()
    decoder = json.JSONDecoder()
    objects: list[bytes] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return objects
        _, end = decoder.raw_decode(text, position)
        objects.append(text[position:end].encode())
        position = end


SAMPLE_B3 = "a7020847b1ec89328e3f8d357f373266"
SAMPLE_H1_STEM = f"httpbin-go-httpbin.httpbin-go-httpbin-1-56058.svc:8080-{SAMPLE_B3}"
SAMPLE_GRPC_STEM = f"grpc-backend.grpc-ns.svc.cluster.local:50051-{SAMPLE_B3}"


def sample_inbound_names() -> list[str]:
    """What the sample's 12 segments are called inbound, in order (both transactions carry
    the same x-b3-traceid)."""
    return [f"{SAMPLE_H1_STEM}-{n}.pb" for n in range(1, 8)] + [
        f"{SAMPLE_GRPC_STEM}-{n}.pb" for n in range(1, 6)
    ]

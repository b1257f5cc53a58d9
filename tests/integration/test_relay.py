"""`tap-emulator relay` without Envoy: the JSON splitter, the JSON to protobuf conversion, the
tap configuration, the bounded queue, and the relay process between a scripted admin
endpoint (a real HTTP/1.1 server in this test's event loop, speaking Envoy's /tap protocol
as Envoy 1.40 does) and a real emulator process."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import random
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st

from tap_emulator.captures.json_objects import JsonObjectSplitter
from tap_emulator.tools._trace_files import split_length_delimited
from tap_emulator.tools.relay import (
    Item,
    RelayConfig,
    TraceQueue,
    header_match,
    trace_from_json,
)
from tests.helpers.harness import LoggedProcess, Processes, free_port
from tests.helpers.paths import VECTORS as VECTORS_DIR

VECTORS = VECTORS_DIR
ADMIN_SAMPLE = VECTORS / "admin" / "admin_tap_streaming_json_body_as_string.txt"
B3 = "a7020847b1ec89328e3f8d357f373266"
H1_STEM = f"httpbin-go-httpbin.httpbin-go-httpbin-1-56058.svc:8080-{B3}"
GRPC_STEM = f"grpc-backend.grpc-ns.svc.cluster.local:50051-{B3}"
NAMESPACE = "relay-ns"
NODE = {
    "id": f"sidecar~10.1.2.3~client-5d8.{NAMESPACE}~{NAMESPACE}.svc.cluster.local",
    "cluster": f"client.{NAMESPACE}",
    "metadata": {"NAMESPACE": NAMESPACE, "WORKLOAD_NAME": "client"},
    "user_agent_name": "envoy",
    "extensions": [{"name": "envoy.filters.http.tap", "category": "envoy.filters.http"}],
    "a_field_from_a_future_envoy": {"x": 1},
}


def sample_objects() -> list[bytes]:
    """The admin sample's objects, each exactly as Envoy wrote it."""
    if not ADMIN_SAMPLE.is_file():
        pytest.skip(f"admin sample not found at {ADMIN_SAMPLE}")
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


def pieces_of(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# --- the splitter ---------------------------------------------------------------------------


@given(st.lists(st.integers(min_value=0, max_value=10**6), max_size=200))
def test_splitter_finds_every_object_of_the_admin_sample_however_it_is_cut(
    cuts: list[int],
) -> None:
    expected = sample_objects()
    data = ADMIN_SAMPLE.read_bytes()
    splitter = JsonObjectSplitter(max_object_bytes=64 * 1024)
    found = [obj for piece in pieces_of(data, cuts) for obj in splitter.feed(piece)]
    assert found == expected
    assert not splitter.pending and splitter.dropped == 0 and splitter.stray_bytes == 0


_TRICKY_TEXT = st.text(alphabet=st.sampled_from('{}[]"\\ \nab\u00e9\u2028'), max_size=30)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | _TRICKY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TRICKY_TEXT, inner, max_size=4),
    max_leaves=20,
)


@given(
    st.lists(st.dictionaries(_TRICKY_TEXT, _VALUES, max_size=5), min_size=1, max_size=6),
    st.lists(st.integers(min_value=0, max_value=10**6), max_size=60),
    st.booleans(),
)
def test_splitter_ignores_braces_quotes_and_escapes_inside_strings(
    documents: list[dict[str, Any]], cuts: list[int], pretty: bool
) -> None:
    encoded = [
        json.dumps(d, indent=1 if pretty else None, ensure_ascii=False).encode() for d in documents
    ]
    splitter = JsonObjectSplitter(max_object_bytes=1 << 20)
    found = [obj for piece in pieces_of(b"\n".join(encoded), cuts) for obj in splitter.feed(piece)]
    assert [json.loads(obj) for obj in found] == documents


def test_splitter_skips_an_object_over_the_bound_without_keeping_it() -> None:
    small = b'{"a": "x"}'
    large = b'{"a": "' + b"y" * 10_000 + b'"}'
    splitter = JsonObjectSplitter(max_object_bytes=1000)
    found = []
    most = 0
    for piece in pieces_of(small + large + small, list(range(0, 20_000, 100))):
        found += splitter.feed(piece)
        most = max(most, splitter.buffered_bytes)
    assert found == [small, small]
    assert splitter.dropped == 1
    assert most <= 1000 + 100


def test_splitter_counts_stray_bytes_between_objects() -> None:
    splitter = JsonObjectSplitter(max_object_bytes=100)
    assert splitter.feed(b'junk {"a": 1}\n\n ]{"b": 2}') == [b'{"a": 1}', b'{"b": 2}']
    assert splitter.stray_bytes == len("junk") + 1


def test_splitter_reports_an_object_cut_short_on_reset() -> None:
    splitter = JsonObjectSplitter(max_object_bytes=100)
    assert splitter.feed(b'{"a": {"b": ') == []
    assert splitter.reset() is True
    assert splitter.feed(b'{"c": 3}') == [b'{"c": 3}']


# --- JSON to protobuf -----------------------------------------------------------------------


def vector_pairs() -> Iterator[tuple[str, bytes, dict[str, Any]]]:
    """(name, binary message, the same message as protobuf JSON) from the shared vectors."""
    for binary in sorted((VECTORS / "buffered").glob("*.pb")):
        [as_json] = json.loads(binary.with_name(binary.name + ".json").read_text())
        yield binary.name, binary.read_bytes(), as_json
    for binary in sorted((VECTORS / "streamed").glob("*.pb_length_delimited")):
        messages = json.loads(binary.with_name(binary.name + ".json").read_text())
        raw = split_length_delimited(binary.read_bytes())
        assert len(raw) == len(messages)
        for index, (one, as_json) in enumerate(zip(raw, messages, strict=True)):
            yield f"{binary.name}[{index}]", one, as_json


def test_json_traces_convert_to_the_bytes_envoy_wrote_in_binary(vectors: Path) -> None:
    compared = 0
    for name, binary, as_json in vector_pairs():
        pretty = json.dumps(as_json, indent=1).encode()  # as Envoy prints: pretty, proto names
        assert trace_from_json(pretty).SerializeToString() == binary, name
        compared += 1
    assert compared > 100


def test_body_as_string_and_as_bytes_differ_only_in_the_body_field() -> None:
    grpc_request_body = next(
        obj for obj in sample_objects() if b"request_body_chunk" in obj and b"ping" in obj
    )
    as_string = trace_from_json(grpc_request_body)
    chunk = as_string.http_streamed_trace_segment.request_body_chunk
    assert chunk.WhichOneof("body_type") == "as_string"
    frame = b"\x00\x00\x00\x00\x06\n\x04ping"
    assert chunk.as_string.encode() == frame

    document = json.loads(grpc_request_body)
    body = document["http_streamed_trace_segment"]["request_body_chunk"]
    body["as_bytes"] = base64.b64encode(body.pop("as_string").encode()).decode()
    as_bytes = trace_from_json(json.dumps(document, indent=1).encode())
    assert as_bytes.http_streamed_trace_segment.request_body_chunk.as_bytes == frame
    as_bytes.http_streamed_trace_segment.request_body_chunk.as_string = frame.decode()
    assert as_bytes == as_string


def test_a_json_document_that_is_not_a_trace_is_refused() -> None:
    with pytest.raises(ValueError, match="http_buffered_trace"):
        trace_from_json(b'{"http_buffered_trace": 7}')


# --- configuration --------------------------------------------------------------------------


def test_tap_request_asks_for_json_bodies_as_bytes_on_the_admin_sink() -> None:
    from tap_emulator.tools._envoy_admin import AdminAddress

    config = RelayConfig(
        AdminAddress.parse("127.0.0.1:15000"),
        "127.0.0.1:9000",
        streamed=True,
        max_buffered_rx_bytes=4096,
        max_buffered_tx_bytes=8192,
    )
    assert json.loads(config.tap_request()) == {
        "config_id": "tap-emulator",
        "tap_config": {
            "match": {"any_match": True},
            "output_config": {
                "sinks": [{"streaming_admin": {}, "format": "JSON_BODY_AS_BYTES"}],
                "streaming": True,
                "max_buffered_rx_bytes": 4096,
                "max_buffered_tx_bytes": 8192,
            },
        },
    }
    assert config.tap_id == "tap-emulator-relay-inbound"


def test_header_matches_become_one_all_of_exact_match() -> None:
    assert header_match(["X-Tap=1", "x-user=a=b"]) == {
        "http_request_headers_match": {
            "headers": [
                {"name": "x-tap", "string_match": {"exact": "1"}},
                {"name": "x-user", "string_match": {"exact": "a=b"}},
            ]
        }
    }
    with pytest.raises(ValueError, match="NAME=VALUE"):
        header_match(["no-equals-sign"])


# --- the bounded queue ----------------------------------------------------------------------


def item(size: int) -> Item:
    return Item(b"", 1, b"x" * size)


@pytest.mark.asyncio
async def test_queue_put_waits_while_the_item_bound_is_reached() -> None:
    queue = TraceQueue(max_items=2, max_bytes=1 << 20)
    await queue.put(item(1))
    await queue.put(item(1))
    blocked = asyncio.create_task(queue.put(item(1)))
    await asyncio.sleep(0.05)
    assert not blocked.done() and len(queue) == 2
    assert await queue.get(1.0) is not None
    await asyncio.wait_for(blocked, 1.0)
    assert len(queue) == 2 and queue.full_waits == 1


@pytest.mark.asyncio
async def test_queue_put_waits_while_the_byte_bound_is_reached() -> None:
    queue = TraceQueue(max_items=100, max_bytes=100)
    await queue.put(item(60))
    blocked = asyncio.create_task(queue.put(item(60)))
    await asyncio.sleep(0.05)
    assert not blocked.done() and queue.bytes == 60
    await queue.get(1.0)
    await asyncio.wait_for(blocked, 1.0)
    assert queue.bytes == 60


@pytest.mark.asyncio
async def test_queue_admits_an_item_over_the_byte_bound_alone() -> None:
    queue = TraceQueue(max_items=100, max_bytes=100)
    await asyncio.wait_for(queue.put(item(500)), 1.0)
    assert queue.bytes == 500
    assert await queue.get(0.01) is not None
    assert await queue.get(0.01) is None


# --- a scripted admin endpoint --------------------------------------------------------------

Script = Callable[[int, "ChunkWriter"], Awaitable[None]]


class ChunkWriter:
    """Writes a /tap response as Envoy does: headers with the first data, then chunks."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._started = False

    async def send(self, data: bytes) -> None:
        if not self._started:
            self._writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            self._started = True
        self._writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await self._writer.drain()

    async def send_in_pieces(self, data: bytes, rng: random.Random, most: int = 40) -> None:
        position = 0
        while position < len(data):
            size = rng.randint(1, most)
            await self.send(data[position : position + size])
            position += size

    def close(self) -> None:
        self._writer.close()


class FakeEnvoyAdmin:
    """Envoy's admin endpoint as far as the relay uses it (GET /server_info, POST /tap with
    its one-stream rule and the body-less probe), over real HTTP/1.1 on 127.0.0.1."""

    def __init__(self, script: Script, node: dict[str, Any] | None = None) -> None:
        self.script = script
        self.node = node or NODE
        self.tap_bodies: list[dict[str, Any]] = []
        self.server_info_calls = 0
        self.attached = False
        self.detached = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _answer(self, writer: asyncio.StreamWriter, status: str, body: bytes) -> None:
        writer.write(
            f"HTTP/1.1 {status}\r\ncontent-type: text/plain\r\n"
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
                info = {"state": "LIVE", "node": self.node}
                await self._answer(writer, "200 OK", json.dumps(info).encode())
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


@pytest_asyncio.fixture
async def processes(tmp_path: Path) -> AsyncIterator[Processes]:
    processes = Processes(tmp_path)
    yield processes
    processes.close()


def pb_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.name.endswith(".pb")}


async def wait_until(predicate: Callable[[], bool], within_seconds: float = 20.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_seconds
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def stopped(process: LoggedProcess, signum: int | None = None) -> int:
    if signum is not None:
        process.process.send_signal(signum)
    return await asyncio.to_thread(process.process.wait, 30)


def totals(relay: LoggedProcess) -> dict[str, str]:
    line = next(line for line in relay.lines if "relay stopped" in line)
    return dict(re.findall(r"(\w+)=([^\s()]+)", line))


def serialized(objects: list[bytes]) -> list[bytes]:
    return [trace_from_json(obj).SerializeToString() for obj in objects]


def inbound_names() -> list[str]:
    """What the sample's 12 segments are called, in order (7 of an HTTP/1.1 POST, then 5 of a
    gRPC call; both carry the same x-b3-traceid)."""
    return [f"{H1_STEM}-{n}.pb" for n in range(1, 8)] + [f"{GRPC_STEM}-{n}.pb" for n in range(1, 6)]


# --- the relay process ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_relay_forwards_the_admin_stream_with_envoys_node_and_exits_after_max_traces(
    processes: Processes, tmp_path: Path
) -> None:
    objects = sample_objects()

    async def script(attach: int, out: ChunkWriter) -> None:
        await out.send_in_pieces(b"".join(objects), random.Random(7))

    admin = FakeEnvoyAdmin(script)
    url = await admin.start()
    output = tmp_path / "out"
    _emulator, target = await asyncio.to_thread(processes.emulator, output)
    relay = processes.relay(
        url, target, "--streamed", "--direction", "outbound", "--max-traces", "12",
        wait_attached=False,
    )  # fmt: skip

    assert await stopped(relay) == 0, relay.log
    files = pb_files(output)
    names = [f"{NAMESPACE}-{B3}-{n}.pb" for n in range(1, 13)]
    assert sorted(files) == sorted(names)
    assert [files[name] for name in names] == serialized(objects)
    [posted] = admin.tap_bodies
    assert posted["config_id"] == "tap-emulator"
    assert posted["tap_config"]["output_config"]["streaming"] is True
    assert posted["tap_config"]["output_config"]["sinks"][0]["format"] == "JSON_BODY_AS_BYTES"
    stats = totals(relay)
    assert (stats["read"], stats["confirmed"], stats["dropped"]) == ("12", "12", "0")
    await admin.close()


@pytest.mark.asyncio
async def test_relay_attaches_again_when_the_admin_connection_drops_mid_trace(
    processes: Processes, tmp_path: Path
) -> None:
    objects = sample_objects()
    half = len(objects[5]) // 2

    async def script(attach: int, out: ChunkWriter) -> None:
        if attach == 1:
            await out.send(b"".join(objects[:5]) + objects[5][:half])
            out.close()  # Envoy went away in the middle of a trace
        else:
            await out.send(b"".join(objects[5:]))

    admin = FakeEnvoyAdmin(script)
    url = await admin.start()
    output = tmp_path / "out"
    _emulator, target = await asyncio.to_thread(processes.emulator, output)
    relay = processes.relay(url, target, "--streamed", "--max-traces", "12", wait_attached=False)

    assert await stopped(relay) == 0, relay.log
    files = pb_files(output)
    assert sorted(files) == sorted(inbound_names())
    assert [files[name] for name in inbound_names()] == serialized(objects)
    stats = totals(relay)
    assert (stats["attaches"], stats["cut_short"], stats["streams"]) == ("2", "1", "1")
    assert admin.server_info_calls == 2
    assert "attaching again" in relay.log
    await admin.close()


@pytest.mark.asyncio
async def test_emulator_restart_loses_nothing_the_relay_had_read(
    processes: Processes, tmp_path: Path
) -> None:
    """The emulator drains (SIGTERM) and comes back on the same address. The relay sees the
    drain in gRPC health, closes its call cleanly (every trace written is confirmed), keeps
    reading into its queue while the emulator is away, and forwards it all on a new call.

    What a new call changes: a streamed transaction split across the two calls has its later
    segments named from Envoy's trace id, since the emulator correlates segments per call."""
    objects = sample_objects()
    releases: asyncio.Queue[int] = asyncio.Queue()

    async def script(attach: int, out: ChunkWriter) -> None:
        sent = 0
        while sent < len(objects):
            count = await releases.get()
            await out.send(b"".join(objects[sent : sent + count]))
            sent += count

    admin = FakeEnvoyAdmin(script)
    url = await admin.start()
    output = tmp_path / "out"
    listen = f"127.0.0.1:{free_port()}"
    first, target = await asyncio.to_thread(processes.emulator, output, listen=listen)
    relay = processes.relay(url, target, "--streamed", "--max-traces", "12", wait_attached=False)
    await asyncio.to_thread(relay.wait_for_line, "relay attached")

    releases.put_nowait(6)
    assert await wait_until(lambda: len(pb_files(output)) == 6)
    assert await stopped(first, signal.SIGTERM) == 0, first.log
    await asyncio.to_thread(relay.wait_for_line, r"stream closed \(the emulator is draining\): 6")
    releases.put_nowait(6)  # read while the emulator is away
    await asyncio.to_thread(relay.wait_for_line, "unavailable")
    await asyncio.to_thread(processes.emulator, output, listen=listen)

    assert await stopped(relay) == 0, relay.log
    files = pb_files(output)
    split = f"no-authority-{4657072182323551182:x}-1.pb"
    names = inbound_names()[:6] + [split] + [f"{GRPC_STEM}-{n}.pb" for n in range(1, 6)]
    assert sorted(files) == sorted(names)
    assert [files[name] for name in names] == serialized(objects)
    stats = totals(relay)
    assert (stats["confirmed"], stats["unconfirmed"], stats["streams"]) == ("12", "0", "2")
    await admin.close()


@pytest.mark.asyncio
async def test_sigterm_waits_for_the_emulators_ok_before_exiting_0(
    processes: Processes, tmp_path: Path
) -> None:
    from tests.helpers.emulator import slow_server_entry

    objects = sample_objects()

    async def script(attach: int, out: ChunkWriter) -> None:
        await out.send(b"".join(objects))

    admin = FakeEnvoyAdmin(script)
    url = await admin.start()
    output = tmp_path / "out"
    gate = tmp_path / "gate"
    _emulator, target = await asyncio.to_thread(
        processes.emulator, output, entry=slow_server_entry(0.0, gate)
    )
    relay = processes.relay(url, target, "--streamed", wait_attached=False)
    await asyncio.to_thread(relay.wait_for_line, "relay streaming")
    await asyncio.sleep(0.3)

    relay.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(1.0)
    assert relay.process.poll() is None, "the relay exited before the emulator answered"
    assert pb_files(output) == {}
    gate.touch()  # the emulator's disk recovers: it publishes, then answers OK

    assert await stopped(relay) == 0, relay.log
    assert sorted(pb_files(output)) == sorted(inbound_names())
    assert totals(relay)["confirmed"] == "12"
    await admin.close()


@pytest.mark.asyncio
async def test_stop_with_the_emulator_unreachable_exits_1_naming_what_was_not_sent(
    processes: Processes,
) -> None:
    objects = sample_objects()

    async def script(attach: int, out: ChunkWriter) -> None:
        await out.send(b"".join(objects))

    admin = FakeEnvoyAdmin(script)
    url = await admin.start()
    relay = processes.relay(
        url, f"127.0.0.1:{free_port()}", "--drain-timeout-seconds", "1", wait_attached=False
    )
    await asyncio.to_thread(relay.wait_for_line, "unavailable")

    assert await stopped(relay, signal.SIGTERM) == 1
    assert "12 traces read from Envoy were not sent" in relay.log
    stats = totals(relay)
    assert (stats["read"], stats["forwarded"], stats["unsent"]) == ("12", "0", "12")
    await admin.close()


def big_trace(index: int, body_bytes: int) -> bytes:
    """A buffered trace as Envoy prints it, with a response body of `body_bytes`."""
    document = {
        "http_buffered_trace": {
            "request": {
                "headers": [
                    {"key": ":authority", "value": "big.example"},
                    {"key": "x-b3-traceid", "value": B3},
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


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


@pytest.mark.asyncio
@pytest.mark.slow
async def test_a_stalled_emulator_stops_the_relay_reading_and_its_memory_stays_bounded(
    processes: Processes, tmp_path: Path
) -> None:
    """Traces keep coming (24 MB) while the emulator's writers are stalled: the relay's queue
    fills, it stops reading, and the admin endpoint's writes block. Nothing is dropped: once
    the writers recover every trace lands."""
    from tests.helpers.emulator import slow_server_entry

    count, body_bytes = 600, 40_000
    traces = [big_trace(index, body_bytes) for index in range(count)]
    written = 0

    async def script(attach: int, out: ChunkWriter) -> None:
        nonlocal written
        for trace in traces:
            await out.send(trace)
            written += 1

    admin = FakeEnvoyAdmin(script)
    url = await admin.start()
    output = tmp_path / "out"
    gate = tmp_path / "gate"
    _emulator, target = await asyncio.to_thread(
        processes.emulator, output, "--queue-max-items", "4", entry=slow_server_entry(0.0, gate)
    )
    relay = processes.relay(
        url, target,
        "--queue-max-items", "1000", "--queue-max-bytes", str(1 << 20),
        "--max-traces", str(count),
        wait_attached=False,
    )  # fmt: skip
    await asyncio.to_thread(relay.wait_for_line, "relay streaming")
    await asyncio.sleep(2.0)
    stalled_at = written
    peak = rss_kib(relay.pid)

    assert stalled_at < count / 2, f"the admin endpoint wrote {stalled_at} of {count} traces"
    assert peak < 100_000, f"relay RSS {peak} KiB"  # measured: about 50 MB
    gate.touch()
    assert await stopped(relay) == 0, relay.log
    assert len(pb_files(output)) == count
    stats = totals(relay)
    assert (stats["confirmed"], stats["dropped"]) == (str(count), "0")
    assert int(stats["queue_full_waits"]) > 0
    await admin.close()

"""Fuzzing the decode-and-name path: arbitrary bytes, mutated real vectors, hostile messages.

Every input goes through what the ingest handler does with a message (decode, identify,
derive; see tests/fuzz/decode_and_name.py) and must keep these properties: no exception
other than DecodeError escapes; every planned file name matches `^[A-Za-z0-9._:-]+$`, does
not start with `.` or `-`, ends in `.pb`, is at most 255 bytes and names a direct child of
the output directory; what would be written parses back as a TraceWrapper.

Example counts are for CI (`HYPOTHESIS_PROFILE=ci`, derandomized); `HYPOTHESIS_PROFILE=deep`
runs ten times as many. The atheris targets' corpora (tests/fuzz/corpus/) are replayed here.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
from tap_emulator._proto.envoy.service.tap.v3.tap_pb2 import StreamTapsRequest
from tap_emulator.config import Settings
from tap_emulator.derive.naming import NameFormat
from tap_emulator.testing import InProcessEmulator
from tap_emulator.write.queue import Publication
from tests.fuzz.decode_and_name import (
    Fed,
    Pipeline,
    UnsafeNameError,
    check_name,
    split_stream,
)
from tests.fuzz.derive_target import check_derive_input
from tests.fuzz.naming_target import check_naming_input
from tests.helpers.paths import VECTORS

CORPUS = Path(__file__).resolve().parents[1] / "fuzz" / "corpus"
SCALE = 10 if os.environ.get("HYPOTHESIS_PROFILE") == "deep" else 1


def fuzz_settings(examples: int) -> settings:
    """CI example counts; ten times as many under HYPOTHESIS_PROFILE=deep."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """An output directory that naming may stat but nothing writes to."""
    with tempfile.TemporaryDirectory(prefix="tap-fuzz-") as directory:
        yield Path(directory)


def run_stream(scratch: Path, messages: list[bytes], name_format: NameFormat) -> list[Fed]:
    pipeline = Pipeline(scratch, name_format)
    try:
        return pipeline.feed_stream(messages)
    finally:
        pipeline.close()


def describe(fed: Fed) -> str:
    if not fed.decoded:
        return "refused (DecodeError)"
    return f"decoded into {min(len(fed.names), 2)}{'+' if len(fed.names) > 2 else ''} files"


# --- arbitrary bytes --------------------------------------------------------------------


@fuzz_settings(3000)
@given(messages=st.lists(st.binary(max_size=1024), min_size=1, max_size=4))
def test_arbitrary_bytes_decode_or_are_refused_and_names_stay_safe(
    scratch: Path, messages: list[bytes]
) -> None:
    for fed in run_stream(scratch, messages, NameFormat.PLAIN):
        assert fed.decoded or not fed.names
        event(describe(fed))


# --- mutated real vectors ---------------------------------------------------------------


def _vector_messages() -> list[bytes]:
    """Serialized StreamTapsRequests built from the real Envoy vectors."""
    messages = []
    for path in sorted(VECTORS.glob("buffered*/*.pb")):
        request = StreamTapsRequest(trace_id=3)
        request.identifier.tap_id = "tap-inbound"
        request.trace.CopyFrom(TraceWrapper.FromString(path.read_bytes()))
        messages.append(request.SerializeToString())
    for path in sorted(VECTORS.glob("streamed*/*.pb_length_delimited")):
        for raw in split_stream(path.read_bytes()):
            request = StreamTapsRequest()
            request.trace.CopyFrom(TraceWrapper.FromString(raw))
            messages.append(request.SerializeToString())
    for path in sorted(VECTORS.glob("synthetic/*.pb_length_delimited")):
        messages += split_stream(path.read_bytes())
    return messages


VECTOR_MESSAGES = _vector_messages()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real message with bit flips, a truncation, a splice, an insertion or a deletion."""
    data = bytearray(draw(st.sampled_from(VECTOR_MESSAGES)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "splice", "insert", "delete"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "splice":
            other = draw(st.sampled_from(VECTOR_MESSAGES))
            data[at:] = other[draw(st.integers(0, len(other))) :]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


@fuzz_settings(3000)
@given(messages=st.lists(mutated(), min_size=1, max_size=3), split=st.booleans())
def test_mutated_real_vectors_keep_names_safe(
    scratch: Path, messages: list[bytes], split: bool
) -> None:
    name_format = NameFormat.REQ_RES if split else NameFormat.PLAIN
    for fed in run_stream(scratch, messages, name_format):
        assert fed.decoded or not fed.names
        event(describe(fed))


def test_every_unmutated_vector_decodes_into_files() -> None:
    assert VECTOR_MESSAGES, f"no vectors in {VECTORS}"
    with tempfile.TemporaryDirectory() as directory:
        feds = run_stream(Path(directory), VECTOR_MESSAGES, NameFormat.PLAIN)
    assert all(fed.decoded and len(fed.names) == 1 for fed in feds)
    names = [name for fed in feds for name in fed.names]
    assert len(names) == len(set(names))


# --- structured hostile messages --------------------------------------------------------

HOSTILE_VALUES = [
    "",
    ".",
    "..",
    "../../etc/passwd",
    "/etc/passwd",
    "a/b",
    "a%2Fb",
    "%2F..%2F",
    "nul\x00byte",
    "\x00",
    "\u202eevil",
    "\ufb01",
    "fi",
    "\u212a",
    "k",
    "CON",
    "NUL",
    "COM1",
    "-rf",
    ".hidden",
    "EXAMPLE.com",
    "example.com",
    "[::1]:8080",
    "user@evil.example",
    "\r\nFAKE LOG LINE\x1b[31m",
    "0" * 32,
    "A7020847B1EC89328E3F8D357F373266",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "80f198ee56343ba8-e457b5a2e4d86bd1-1",
]
TRACE_KEYS = [":authority", "host", "x-b3-traceid", "b3", "traceparent", "x-trace-id"]
HEADER_KEYS = [*TRACE_KEYS, "x-request-id", "authorization", "Cookie", "set-cookie", "x-other"]

text_value = st.one_of(
    st.sampled_from(HOSTILE_VALUES),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=64),
    st.text(st.sampled_from("./-_%:\\\x00 \n~Kk\u212a\u0130é"), max_size=40),
    st.builds(
        lambda piece, count: piece * count,
        st.sampled_from(["a", ".", "/", "é", "\u212a", "-", "\x00", "ab"]),
        st.integers(100, 3000),
    ),
)
header_key = st.one_of(
    st.sampled_from(HEADER_KEYS),
    st.sampled_from(HEADER_KEYS).map(str.upper),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=12),
)
header = st.tuples(header_key, text_value, st.one_of(st.just(b""), st.binary(max_size=64)))
headers = st.lists(header, max_size=8)
SEGMENT_PIECES = [
    None,
    "request_headers",
    "request_body_chunk",
    "request_trailers",
    "response_headers",
    "response_body_chunk",
    "response_trailers",
]
HEADER_PIECES = {"request_headers", "request_trailers", "response_headers", "response_trailers"}


def _add_headers(target: object, pairs: list[tuple[str, str, bytes]]) -> None:
    for key, value, raw_value in pairs:
        added = target.add(key=key)  # type: ignore[attr-defined]
        if value:
            added.value = value
        if raw_value:
            added.raw_value = raw_value


@st.composite
def hostile_request(draw: st.DrawFn) -> StreamTapsRequest:
    request = StreamTapsRequest()
    if draw(st.booleans()):
        identifier = request.identifier
        identifier.tap_id = draw(
            st.one_of(st.sampled_from(["t-inbound", "t-outbound", "x~OUTBOUND", ""]), text_value)
        )
        namespace = draw(text_value)
        identifier.node.id = draw(
            st.one_of(
                text_value, st.just(f"sidecar~10.0.0.1~pod.{namespace}~{namespace}.svc.cluster")
            )
        )
        identifier.node.cluster = draw(text_value)
        kind = draw(st.sampled_from(["string", "number", "none"]))
        if kind == "string":
            identifier.node.metadata.fields["NAMESPACE"].string_value = namespace
        elif kind == "number":
            identifier.node.metadata.fields["NAMESPACE"].number_value = 7
    request.trace_id = draw(st.sampled_from([0, 1, 42, 2**64 - 1]))
    kind = draw(
        st.sampled_from(["none", "buffered", "segment", "socket", "socket_streamed", "empty"])
    )
    trace = request.trace
    if kind == "buffered":
        buffered = trace.http_buffered_trace
        if draw(st.booleans()):
            _add_headers(buffered.request.headers, draw(headers))
            _add_headers(buffered.request.trailers, draw(headers))
        if draw(st.booleans()):
            _add_headers(buffered.response.headers, draw(headers))
            buffered.response.body.as_bytes = draw(st.binary(max_size=64))
    elif kind == "segment":
        segment = trace.http_streamed_trace_segment
        segment.trace_id = draw(st.sampled_from([0, 1, 2, 2**64 - 1]))
        piece = draw(st.sampled_from(SEGMENT_PIECES))
        if piece in HEADER_PIECES:
            _add_headers(getattr(segment, piece).headers, draw(headers))
        elif piece is not None:
            getattr(segment, piece).as_bytes = draw(st.binary(max_size=64))
    elif kind == "socket":
        trace.socket_buffered_trace.trace_id = draw(st.sampled_from([0, 9, 2**64 - 1]))
    elif kind == "socket_streamed":
        trace.socket_streamed_trace_segment.trace_id = draw(st.sampled_from([0, 9]))
    elif kind == "empty":
        trace.SetInParent()
    return request


def expected_files(request: StreamTapsRequest, name_format: NameFormat) -> int:
    if not request.HasField("trace") or request.trace.ByteSize() == 0:
        return 0
    split = name_format is NameFormat.REQ_RES
    return 2 if split and request.trace.HasField("http_buffered_trace") else 1


def assert_redacted(payload: bytes) -> None:
    trace = TraceWrapper.FromString(payload)
    pieces = []
    if trace.HasField("http_buffered_trace"):
        buffered = trace.http_buffered_trace
        pieces = [buffered.request.headers, buffered.request.trailers]
        pieces += [buffered.response.headers, buffered.response.trailers]
    elif trace.HasField("http_streamed_trace_segment"):
        segment = trace.http_streamed_trace_segment
        piece = segment.WhichOneof("message_piece")
        if piece in HEADER_PIECES:
            pieces = [getattr(segment, piece).headers]
    for piece_headers in pieces:
        for item in piece_headers:
            if item.key.lower() in ("authorization", "cookie", "set-cookie"):
                assert item.value in ("", "REDACTED") and item.raw_value in (b"", b"REDACTED")


@fuzz_settings(1500)
@given(
    requests=st.lists(hostile_request(), min_size=1, max_size=5),
    name_format=st.sampled_from(list(NameFormat)),
)
def test_hostile_messages_get_safe_unique_names_and_the_right_number_of_files(
    scratch: Path, requests: list[StreamTapsRequest], name_format: NameFormat
) -> None:
    feds = run_stream(scratch, [r.SerializeToString() for r in requests], name_format)

    for request, fed in zip(requests, feds, strict=True):
        assert fed.decoded
        assert len(fed.names) == expected_files(request, name_format)
        for payload in fed.payloads:
            assert_redacted(payload)
    names = [name for fed in feds for name in fed.names]
    assert len(names) == len(set(names)), "two messages were given the same file name"


def test_ten_thousand_headers_and_huge_values_are_named_safely(scratch: Path) -> None:
    request = StreamTapsRequest(trace_id=1)
    request_headers = request.trace.http_buffered_trace.request.headers
    for n in range(10_000):
        request_headers.add(key=f"x-h-{n}", value="v" * 10)
    request_headers.add(key=":authority", value="../" * 100_000)  # 300 KB
    request_headers.add(key="x-b3-traceid", value="f" * 1_000_000)  # malformed: skipped
    request_headers.add(key="x-request-id", value="r" * 128)
    [fed] = run_stream(scratch, [request.SerializeToString()], NameFormat.PLAIN)

    [name] = fed.names
    assert name.endswith("-" + "r" * 91 + "_" + name.split("_")[-1])  # cut and hash-tagged
    assert len(name.encode()) <= 255


def test_invalid_utf8_in_value_is_a_decode_error_and_in_raw_value_is_named(
    scratch: Path,
) -> None:
    request = StreamTapsRequest()
    header = request.trace.http_buffered_trace.request.headers.add(key=":authority")
    header.value = "MARKER"
    wire = request.SerializeToString().replace(b"MARKER", b"\xff\xfe\x00/..")
    header.ClearField("value")
    header.raw_value = b"\xff\xfe\x00/.."
    in_value, in_raw_value = run_stream(
        scratch, [wire, request.SerializeToString()], NameFormat.PLAIN
    )

    assert not in_value.decoded  # a string field must hold UTF-8: INVALID_ARGUMENT
    assert in_raw_value.decoded
    [name] = in_raw_value.names
    assert name.startswith("___")


def test_first_message_without_identifier_and_empty_messages(scratch: Path) -> None:
    no_identifier = StreamTapsRequest()
    no_identifier.trace.http_buffered_trace.request.headers.add(key=":authority", value="a.b")
    later = StreamTapsRequest()
    later.identifier.tap_id = "x-outbound"
    later.identifier.node.metadata.fields["NAMESPACE"].string_value = "ns"
    later.trace.http_buffered_trace.request.headers.add(key=":authority", value="a.b")
    messages = [b"", no_identifier.SerializeToString(), later.SerializeToString(), b""]
    feds = run_stream(scratch, messages, NameFormat.PLAIN)

    assert [fed.decoded for fed in feds] == [True] * 4
    assert [fed.names for fed in feds] == [[], ["a.b-0-1.pb"], ["ns-0-1.pb"], []]


def test_the_name_checker_itself_catches_unsafe_names(scratch: Path) -> None:
    for bad in ["../x.pb", "a/b.pb", ".x.pb", "-x.pb", "x", "a b.pb", "x" * 254 + ".pb", "é.pb"]:
        with pytest.raises(UnsafeNameError):
            check_name(bad, scratch)
    check_name("svc.ns:8080-abc-1.pb", scratch)


# --- the atheris corpora, replayed --------------------------------------------------------


def corpus(target: str) -> list[Path]:
    return sorted((CORPUS / target).iterdir())


def test_derive_corpus_replays_cleanly(tmp_path: Path) -> None:
    seeds = corpus("derive")
    assert len(seeds) >= 50
    pipelines = [Pipeline(tmp_path, name_format) for name_format in NameFormat]
    try:
        for seed in seeds:
            check_derive_input(seed.read_bytes(), pipelines)
    finally:
        for pipeline in pipelines:
            pipeline.close()
    assert list(tmp_path.iterdir()) == []


def test_naming_corpus_replays_cleanly() -> None:
    seeds = corpus("naming")
    assert len(seeds) >= 20
    for seed in seeds:
        check_naming_input(seed.read_bytes())


@fuzz_settings(1000)
@given(data=st.binary(max_size=512))
def test_naming_target_holds_on_arbitrary_bytes(data: bytes) -> None:
    check_naming_input(data)


# --- hostile names, really published ---------------------------------------------------


def test_corpus_names_published_for_real_stay_in_the_output_directory(tmp_path: Path) -> None:
    """Every seed's files written by the real WriterPool; nothing escapes `out/`."""
    canary = tmp_path / "canary"
    canary.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "evil").symlink_to("../canary")
    before = hashlib.sha256(canary.read_bytes()).digest()
    pipeline = Pipeline(out)
    planned: list[tuple[str, bytes]] = []
    try:
        for seed in corpus("derive"):
            for fed in pipeline.feed_stream(split_stream(seed.read_bytes())):
                planned += zip(fed.names, fed.payloads, strict=True)
    finally:
        pipeline.close()

    async def publish() -> None:
        async with InProcessEmulator(Settings(output_dir=out, metrics_listen="")) as served:
            queue = served.emulator.queue
            for name, payload in planned:
                stem, _, rest = name.rpartition("-")
                await queue.put([Publication(stem, int(rest.removesuffix(".pb")), payload)])
            assert await served.stop() == 0

    asyncio.run(publish())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["canary", "out"]
    assert hashlib.sha256(canary.read_bytes()).digest() == before
    on_disk = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "evil"}
    assert on_disk == dict(planned)
    assert all(p.is_file() and not p.is_symlink() for p in out.iterdir() if p.name != "evil")

"""The capture reader on the real Envoy vectors: every transaction once, streamed ones put
back together with the bodies of their buffered twins, and what Envoy left out said."""

from __future__ import annotations

from pathlib import Path

import pytest

from tap_emulator._proto.envoy.service.ext_proc.v3.external_processor_pb2 import (
    ProcessingRequest,
)
from tap_emulator.captures.exchange import load_exchange
from tap_emulator.captures.model import Missing, PieceKind, Transaction
from tap_emulator.captures.reader import ReadReport, read_transactions
from tests.helpers.captures import PAIRED_CASES, vector_traces
from tests.helpers.extproc_vectors import load_all

CAPTURE_DIRS = ("buffered", "streamed", "streamed_raw", "buffered_zipkin", "streamed_zipkin")


def only(path: Path) -> Transaction:
    [transaction] = list(read_transactions([path]))
    return transaction


def binary_files(vectors: Path) -> list[Path]:
    return sorted(
        path
        for name in CAPTURE_DIRS
        for path in (vectors / name).iterdir()
        if path.suffix in (".pb", ".pb_length_delimited")
    )


def test_every_envoy_file_is_one_transaction_listed_once(vectors: Path) -> None:
    report = ReadReport()
    listed = list(read_transactions([vectors / name for name in CAPTURE_DIRS], report))

    files = binary_files(vectors)
    assert len(listed) == len(files)
    assert sorted(file for t in listed for file in t.files) == sorted(map(str, files))
    assert len({t.key for t in listed}) == len(listed)
    assert report.twins_skipped == len(files)  # each .json twin left for its binary file
    assert report.unreadable_files == 0
    assert all(t.final for t in listed)


@pytest.mark.parametrize("case", PAIRED_CASES)
def test_a_streamed_transaction_carries_the_bodies_of_its_buffered_capture(
    vectors: Path, case: str
) -> None:
    buffered = load_exchange(only(vectors / "buffered" / f"{case}.pb"))
    streamed = load_exchange(only(vectors / "streamed" / f"{case}.pb_length_delimited"))

    if case == "h1_post_chunked_large_b3":
        # Envoy caps each streamed chunk, but a buffered body as a whole (vectors README 5).
        assert len(streamed.request.chunks) == 3 and streamed.request.body[:1024] == (
            buffered.request.body
        )
    else:
        assert streamed.request.body == buffered.request.body
    # Echo backends put the request's x-request-id in the body; the two runs had their own.
    ids = (buffered.request.header("x-request-id"), streamed.request.header("x-request-id"))
    expected = buffered.response.body
    if ids[0] and ids[1]:
        expected = expected.replace(ids[0].encode(), ids[1].encode())
    assert streamed.response.body == expected
    assert streamed.response.truncated == buffered.response.truncated
    for field in ("status", "grpc_status", "method", "authority", "missing"):
        assert getattr(streamed.transaction, field) == getattr(buffered.transaction, field)


@pytest.mark.parametrize(
    "path", ["buffered/odd_authority_space.pb", "streamed/odd_authority_space.pb_length_delimited"]
)
def test_a_request_envoy_rejected_has_no_request_and_says_so(vectors: Path, path: str) -> None:
    transaction = only(vectors / path)

    assert transaction.missing == (Missing.REQUEST,)
    assert transaction.status == 400
    assert transaction.method is None and transaction.authority is None


def test_a_streamed_binary_file_is_read_whole(vectors: Path) -> None:
    path = vectors / "streamed_raw" / "h1_post_chunked_b3.pb"
    transaction = only(path)

    assert [piece.kind for piece in transaction.pieces] == [
        PieceKind.REQUEST_HEADERS,
        PieceKind.REQUEST_BODY_CHUNK,
        PieceKind.REQUEST_BODY_CHUNK,
        PieceKind.RESPONSE_HEADERS,
        PieceKind.RESPONSE_BODY_CHUNK,
        PieceKind.RESPONSE_BODY_CHUNK,
        PieceKind.RESPONSE_BODY_CHUNK,
    ]
    assert len(vector_traces(path)) == 7
    assert (transaction.method, transaction.path, transaction.status) == ("POST", "/chunked", 200)
    assert (transaction.request_body_bytes, transaction.response_body_bytes) == (12, 48)
    assert transaction.complete


def test_grpc_status_comes_from_trailers_or_a_trailers_only_response(vectors: Path) -> None:
    unary = only(vectors / "streamed" / "grpc_unary_trailers.pb_length_delimited")
    failed = only(vectors / "streamed" / "grpc_fail_trailers_only.pb_length_delimited")

    assert (unary.grpc_status, unary.http_version) == (0, "HTTP/2")
    assert failed.grpc_status == 3 and failed.response_body_bytes == 0


def test_truncation_and_the_announced_length_are_both_kept(vectors: Path) -> None:
    transaction = only(vectors / "buffered" / "h1_post_large_b3.pb")

    assert transaction.request_truncated and transaction.response_truncated
    assert transaction.request_body_bytes == 1024
    assert transaction.request_content_length == 5000


def test_recorded_times_and_addresses_are_used(vectors: Path) -> None:
    transaction = only(vectors / "buffered" / "h1_get_b3.pb")

    assert transaction.time_source == "recorded"
    assert transaction.iso_time() == "2026-11-24T16:51:15.527338Z"
    assert transaction.duration_seconds == pytest.approx(0.001197, abs=1e-6)
    assert transaction.client_address == "127.0.0.1:41044"
    assert transaction.trace_id == "a7020847b1ec89328e3f8d357f373266"


def test_streamed_envoy_files_are_timed_by_their_mtime(vectors: Path) -> None:
    path = vectors / "streamed" / "h1_get_b3.pb_length_delimited"
    transaction = only(path)

    assert transaction.time_source == "file_mtime"
    assert transaction.time == path.stat().st_mtime
    assert transaction.envoy_trace_id is not None


def test_pseudo_headers_cannot_tell_http1_from_http2(vectors: Path) -> None:
    # Envoy's HTTP/1 codec turns Host into :authority and adds :scheme, so the tap and
    # ext_proc record an HTTP/1.1 request with the pseudo-headers of an HTTP/2 one.
    pseudo = frozenset({":authority", ":method", ":path", ":scheme"})
    by_ext_proc = set()
    for case in load_all():
        first = ProcessingRequest.FromString(case.messages[0])
        if not first.HasField("request_headers"):
            continue  # a request Envoy rejected: ext_proc saw only the response
        names = {item.key for item in first.request_headers.headers.headers}
        by_ext_proc.add((case.client.protocol, frozenset(names & (pseudo | {"host"}))))
    h1 = only(vectors / "buffered" / "h1_get_b3.pb")
    h2 = only(vectors / "buffered" / "h2_get_b3.pb")
    by_tap = [{f.name for f in load_exchange(t).request.headers or []} for t in (h1, h2)]

    assert by_ext_proc == {("HTTP/1.1", pseudo), ("h2c", pseudo), ("gRPC (h2c)", pseudo)}
    assert all(pseudo <= names and "host" not in names for names in by_tap)
    assert h1.http_version is h2.http_version is None

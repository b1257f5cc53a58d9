"""The incremental assembler on the emulator's one-file-per-piece output: grouping by stem and
Envoy id in any order, what is missing, early and late finals, bounded memory."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tap_emulator.captures.assemble import Assembler
from tap_emulator.captures.formats import is_shadowed, twins_preferred_over, without_shadowed
from tap_emulator.captures.model import Missing, SequenceGap, Transaction
from tests.helpers.captures import AUTHORITY, B3, buffered, request_headers, segment

STEM = f"{AUTHORITY}-{B3}"


def grpc_unary(envoy_id: int) -> list[bytes]:
    return [
        segment(envoy_id, "request_headers", headers=request_headers()),
        segment(envoy_id, "request_body_chunk", as_bytes=b"\x00\x00\x00\x00\x02\x08\x01"),
        segment(envoy_id, "response_headers", headers=[(":status", "200")]),
        segment(envoy_id, "response_body_chunk", as_bytes=b"\x00\x00\x00\x00\x00"),
        segment(envoy_id, "response_trailers", headers=[("grpc-status", "0")]),
    ]


def plain_get(envoy_id: int) -> list[bytes]:
    return [
        segment(envoy_id, "request_headers", headers=request_headers()),
        segment(envoy_id, "response_headers", headers=[(":status", "200")]),
        segment(envoy_id, "response_body_chunk", as_bytes=b"hello"),
    ]


def feed_all(assembler: Assembler, files: list[tuple[str, bytes]]) -> list[Transaction]:
    finals = []
    for name, data in files:
        finals.extend(t for t in assembler.feed(name, data) if t.final)
    return finals + assembler.flush()


def named(pieces: list[bytes], first: int = 1, stem: str = STEM) -> list[tuple[str, bytes]]:
    return [(f"{stem}-{n}.pb", raw) for n, raw in enumerate(pieces, start=first)]


@pytest.mark.parametrize("order", list(itertools.permutations(range(5)))[::7])
def test_the_pieces_of_a_transaction_come_together_in_any_order(order: tuple[int, ...]) -> None:
    files = named(grpc_unary(0xABC))
    [transaction] = feed_all(Assembler(), [files[i] for i in order])

    assert transaction.complete
    assert [p.sequence for p in transaction.pieces] == [1, 2, 3, 4, 5]
    assert (transaction.method, transaction.status, transaction.grpc_status) == ("GET", 200, 0)
    assert transaction.envoy_trace_id == 0xABC and transaction.name_trace_id == B3
    assert transaction.request_body_bytes == 7


def test_a_transaction_proven_whole_is_final_at_its_last_piece() -> None:
    assembler = Assembler()
    updates = [assembler.feed(name, data) for name, data in named(grpc_unary(7))]

    assert [u[0].final for u in updates] == [False, False, False, False, True]
    assert assembler.open_transactions == 0


def test_without_trailers_nothing_proves_the_end_so_it_stays_open_until_flushed() -> None:
    assembler = Assembler()
    updates = [t for name, data in named(plain_get(7)) for t in assembler.feed(name, data)]

    assert not any(t.final for t in updates)
    [flushed] = assembler.flush()
    assert flushed.final and flushed.complete and flushed.response_body_bytes == 5


def test_thirty_one_transactions_on_one_stem_are_told_apart_by_envoy_id() -> None:
    pieces: list[bytes] = []
    for envoy_id in range(1, 32):
        pieces.extend(plain_get(envoy_id) if envoy_id % 2 else grpc_unary(envoy_id))
    # Interleave them the way concurrent requests would: round-robin by position.
    files = named(pieces)
    listed = feed_all(Assembler(), files[1::2] + files[0::2])

    assert len(listed) == 31
    assert sorted(t.envoy_trace_id or 0 for t in listed) == list(range(1, 32))
    assert all(t.complete for t in listed)
    assert sum(len(t.pieces) for t in listed) == len(files)


def test_missing_request_headers_and_missing_response_are_named() -> None:
    no_headers = named(plain_get(1)[1:])
    no_response = named(plain_get(2)[:1], first=9)
    listed = {t.envoy_trace_id: t for t in feed_all(Assembler(), no_headers + no_response)}

    assert listed[1].missing == (Missing.REQUEST_HEADERS,)
    assert listed[2].missing == (Missing.RESPONSE,)


def test_a_sequence_number_no_file_holds_is_a_gap() -> None:
    files = named(grpc_unary(5))
    [transaction] = feed_all(Assembler(), files[:2] + files[3:])

    assert Missing.SEQUENCE_GAP in transaction.missing
    assert transaction.sequence_gaps == (SequenceGap(STEM, 3, 3),)


def test_a_number_held_by_another_transaction_of_the_stem_is_no_gap() -> None:
    first, second = plain_get(1), plain_get(2)
    files = named([first[0], second[0], first[1], second[1], first[2], second[2]])
    listed = feed_all(Assembler(), files)

    assert len(listed) == 2 and all(not t.sequence_gaps for t in listed)


def test_past_max_open_the_oldest_is_flushed_marked_evicted() -> None:
    assembler = Assembler(max_open=2)
    evicted = []
    for envoy_id in (1, 2, 3):
        for name, data in named(plain_get(envoy_id)[:1], first=envoy_id):
            evicted.extend(t for t in assembler.feed(name, data) if t.final)

    assert [t.envoy_trace_id for t in evicted] == [1]
    assert evicted[0].evicted
    assert assembler.open_transactions == 2


def test_the_piece_bound_also_evicts() -> None:
    assembler = Assembler(max_open_pieces=4)
    finals = feed_all(assembler, named(plain_get(1) + plain_get(2)))

    assert [t.evicted for t in finals] == [True, False]


def test_req_res_halves_of_a_buffered_trace_pair_up() -> None:
    request = buffered(request_headers(), None, connection_port=5000)
    response = buffered(None, [(":status", "204")], connection_port=5000)
    other = buffered(None, [(":status", "500")], connection_port=6000)
    files = [
        (f"{STEM}-res-1.pb", response),
        (f"{STEM}-res-2.pb", other),
        (f"{STEM}-req-1.pb", request),
    ]
    listed = feed_all(Assembler(), files)

    paired = next(t for t in listed if t.status == 204)
    assert paired.complete and paired.method == "GET"
    assert [p.kind.value for p in paired.pieces] == ["buffered_request", "buffered_response"]
    alone = next(t for t in listed if t.status == 500)
    assert alone.missing == (Missing.REQUEST,)


def test_req_res_streamed_pieces_join_across_the_two_counters() -> None:
    pieces = grpc_unary(9)
    files = [(f"{STEM}-req-1.pb", pieces[0]), (f"{STEM}-req-2.pb", pieces[1])]
    files += [(f"{STEM}-res-{n}.pb", raw) for n, raw in enumerate(pieces[2:], start=1)]
    assembler = Assembler()
    updates = [t for name, data in files for t in assembler.feed(name, data)]

    assert updates[-1].final and updates[-1].complete
    assert updates[-1].pieces[0].kind.value == "request_headers"


@pytest.mark.parametrize(
    ("prefix", "authority", "direction"),
    [
        (AUTHORITY, AUTHORITY, "inbound"),  # an authority with dots cannot be a namespace
        ("sleep-2", AUTHORITY, "outbound"),  # not the authority: a client namespace
        ("httpbin", "httpbin", "unknown"),  # could be either
    ],
)
def test_direction_is_told_only_where_the_name_proves_it(
    prefix: str, authority: str, direction: str
) -> None:
    headers = [(":authority", authority), (":method", "GET"), ("x-b3-traceid", B3)]
    [transaction] = feed_all(
        Assembler(), [(f"{prefix}-{B3}-1.pb", buffered(headers, [(":status", "200")]))]
    )

    assert transaction.direction == direction
    assert transaction.client_namespace == (prefix if direction == "outbound" else None)


def test_a_uuid_trace_id_is_split_from_a_dashed_prefix() -> None:
    request_id = "c4c2cbc8-a87d-4b08-909c-c115bea4d25f"
    headers = [(":authority", "a-b.svc"), ("x-request-id", request_id)]
    [transaction] = feed_all(
        Assembler(), [(f"a-b.svc-{request_id}-3.pb", buffered(headers, [(":status", "200")]))]
    )

    assert transaction.name_trace_id == request_id == transaction.trace_id
    assert transaction.direction == "inbound"


def test_json_and_text_twins_yield_to_the_binary_file(tmp_path: Path) -> None:
    (tmp_path / "x.pb").write_bytes(b"")
    (tmp_path / "tap_1.pb_length_delimited").write_bytes(b"")

    assert is_shadowed(str(tmp_path), "x.pb.json")
    assert is_shadowed(str(tmp_path), "tap_1.json")
    assert not is_shadowed(str(tmp_path), "y.pb.json")
    assert twins_preferred_over("x.pb") == []
    assert without_shadowed(["d/x.pb", "d/x.pb.json", "d/z.json"]) == ["d/x.pb", "d/z.json"]

"""The page's index and its feed: bounded whatever arrives (100,000 transactions through the
real reader), updates keep their row, halves join, the newest kept when browsing, and the
files waiting to be read bounded by count and bytes, with what was skipped counted."""

from __future__ import annotations

import gc
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tap_emulator.captures.assemble import Assembler
from tap_emulator.captures.model import Transaction
from tap_emulator.web.feed import Indexer, PublicationFeed
from tap_emulator.web.index import Change, Keep, TransactionIndex
from tests.helpers.captures import AUTHORITY, buffered, request_headers, segment

OUT = Path("/captures")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Published:
    stem: str
    sequence: int
    payload: bytes


def get_trace(number: int, status: int = 200) -> bytes:
    return buffered(
        request_headers(trace=f"{number:032x}"),
        [(":status", str(status))],
        response_body=b"ok",
    )


def publication(number: int) -> Published:
    return Published(f"{AUTHORITY}-{number:032x}", 1, get_trace(number))


def offer(feed: PublicationFeed, item: Published) -> None:
    feed.offer(item.stem, item.sequence, item.payload, time.time())


def indexer_for(index: TransactionIndex, changes: list[Change] | None = None) -> Indexer:
    feed = PublicationFeed(max_items=1_000_000, max_bytes=1 << 40)
    on_change = changes.append if changes is not None else lambda change: None
    return Indexer(feed, index, OUT, on_change)


def index_everything(indexer: Indexer) -> None:
    while indexer.feed.pending:
        indexer.index_slice(time.perf_counter() + 1.0)


def records(files: list[tuple[str, bytes]], mtime: float = 1.0) -> list[Transaction]:
    assembler = Assembler(report_open=True)
    found = []
    for name, data in files:
        found.extend(assembler.feed(name, data, mtime=mtime))
    return found


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE_BYTES


@pytest.mark.slow
def test_the_index_stays_bounded_after_100000_transactions() -> None:
    index = TransactionIndex(1_000)
    indexer = indexer_for(index)
    rss: dict[int, int] = {}
    for chunk in range(0, 100_000, 10_000):
        for number in range(chunk, chunk + 10_000):
            offer(indexer.feed, publication(number))
        index_everything(indexer)
        gc.collect()
        rss[chunk + 10_000] = rss_bytes()

    assert indexer.indexed == 100_000
    assert len(index) == 1_000 and index.forgotten == 99_000
    assert len(index._numbers) == 1_000 and len(index._entries) == 1_000
    assert indexer.assembler.open_transactions == 0 and indexer.feed.pending == 0
    rows = [json.loads(text) for text in index.rows_json()]
    assert [row["trace"] for row in rows] == [f"{n:032x}" for n in range(99_000, 100_000)]
    growth = rss[100_000] - rss[50_000]
    print(f"RSS after 50,000: {rss[50_000] >> 20} MiB, after 100,000: {rss[100_000] >> 20} MiB")
    # Holding every transaction would take over 100 MiB more (each row is about 2 KiB).
    assert growth < 16 * 1024 * 1024


def test_open_streamed_transactions_are_bounded_by_the_index_size() -> None:
    index = TransactionIndex(200)
    indexer = indexer_for(index)
    for envoy_id in range(5_000):  # request headers only: never proven whole, never final
        stem = f"{AUTHORITY}-{envoy_id:032x}"
        raw = segment(envoy_id, "request_headers", headers=request_headers(f"{envoy_id:032x}"))
        offer(indexer.feed, Published(stem, 1, raw))
    index_everything(indexer)

    assert indexer.assembler.open_transactions <= 200
    assert len(index) == 200


def test_an_open_transaction_keeps_its_row_as_it_gains_pieces() -> None:
    index = TransactionIndex(10)
    changes: list[Change] = []
    indexer = indexer_for(index, changes)
    stem = f"{AUTHORITY}-{'ab' * 16}"
    pieces = [
        segment(7, "request_headers", headers=request_headers("ab" * 16)),
        segment(7, "response_headers", headers=[(":status", "503")]),
        segment(7, "response_trailers", headers=[("grpc-status", "14")]),
    ]
    for number, raw in enumerate(pieces, start=1):
        offer(indexer.feed, Published(stem, number, raw))
        index_everything(indexer)

    [row] = [json.loads(text) for text in index.rows_json()]
    assert (row["status"], row["grpcStatus"], row["final"]) == (503, 14, True)
    assert [list(change.rows) for change in changes] == [[row["id"]]] * 3


def test_the_halves_of_a_buffered_trace_join_into_the_first_halfs_row() -> None:
    index = TransactionIndex(10)
    stem = f"{AUTHORITY}-{'cd' * 16}"
    request_half = buffered(request_headers("cd" * 16), None)
    response_half = buffered(None, [(":status", "201")])
    found = records([(f"/o/{stem}-req-1.pb", request_half), (f"/o/{stem}-res-1.pb", response_half)])
    first = index.update(found[:1])
    second = index.update(found[1:])

    [row] = [json.loads(text) for text in index.rows_json()]
    assert row["status"] == 201 and row["final"]
    assert list(first.rows) == list(second.rows) == [row["id"]]
    assert not second.gone


def test_arrival_keeps_the_latest_to_arrive_and_says_which_went() -> None:
    index = TransactionIndex(3)
    found = records([(f"/o/{AUTHORITY}-{n:032x}-1.pb", get_trace(n)) for n in range(5)])
    changes = [index.update([record]) for record in found]

    assert [json.loads(t)["trace"] for t in index.rows_json()] == [f"{n:032x}" for n in (2, 3, 4)]
    assert changes[3].gone == {1} and changes[4].gone == {2}
    assert index.get(1) is None and index.get(5) is not None


def test_newest_keeps_the_newest_by_time_whatever_the_order_read() -> None:
    index = TransactionIndex(3, Keep.NEWEST)
    for n in (5, 1, 9, 7, 2, 8):
        name = f"/o/{AUTHORITY}-{n:032x}-1.pb"
        [record] = records([(name, get_trace(n))], mtime=float(n))
        index.update([record])

    times = sorted(json.loads(t)["time"] for t in index.rows_json())
    assert times == [7.0, 8.0, 9.0]
    assert index.forgotten == 3


def test_changes_merge_to_the_last_word_on_each_row() -> None:
    staged = Change(rows={1: "a", 2: "b"})
    staged.merge(Change(rows={2: "b2"}, gone={1}))
    staged.merge(Change(rows={1: "a3"}))

    assert staged.rows == {2: "b2", 1: "a3"} and staged.gone == set()


# --- the hand-off ---------------------------------------------------------------------------


def test_the_feed_skips_the_oldest_past_its_count() -> None:
    feed = PublicationFeed(max_items=3)
    for n in range(5):
        offer(feed, publication(n))

    assert (feed.pending, feed.skipped, feed.offered) == (3, 2, 5)
    taken = [feed.take() for _ in range(3)]
    assert [item.stem[-1] for item in taken if item is not None] == ["2", "3", "4"]


def test_the_feed_skips_past_its_bytes_and_never_holds_a_file_larger_than_them() -> None:
    feed = PublicationFeed(max_items=100, max_bytes=250)
    offer(feed, Published("a-1", 1, b"x" * 100))
    offer(feed, Published("b-1", 1, b"x" * 100))
    offer(feed, Published("c-1", 1, b"x" * 100))  # over 250: the oldest goes
    offer(feed, Published("d-1", 1, b"x" * 300))  # larger than the bound: never held

    assert (feed.pending, feed.skipped) == (2, 2)


def test_a_slice_ends_at_its_deadline_and_the_rest_waits() -> None:
    index = TransactionIndex(100)
    indexer = indexer_for(index)
    for n in range(10):
        offer(indexer.feed, publication(n))

    indexer.index_slice(deadline=0.0)  # already past: one file, then the slice ends

    assert indexer.indexed == 1 and indexer.feed.pending == 9

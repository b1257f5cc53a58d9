"""The forward queue: one lane per sender, one bound for all, and a policy when it is full."""

from __future__ import annotations

import asyncio

import pytest

from tap_emulator.forward.policy import WhenFull
from tap_emulator.forward.queue import ForwardQueue, Lane


def drain(queue: ForwardQueue, lane: Lane) -> list[int]:
    taken = []
    while (item := queue.take(lane)) is not None:
        taken.append(item[0])
    return taken


def test_a_lane_gives_its_traces_back_in_the_order_they_came() -> None:
    queue = ForwardQueue(10, 1 << 20, WhenFull.DROP_OLDEST)
    lane = Lane()
    for trace_id in (5, 3, 9):
        assert queue.put(lane, trace_id, b"x") == 0
    assert drain(queue, lane) == [5, 3, 9]
    assert (queue.items, queue.size_bytes) == (0, 0)


def test_drop_oldest_evicts_the_longest_queued_trace_of_any_lane() -> None:
    queue = ForwardQueue(3, 1 << 20, WhenFull.DROP_OLDEST)
    first, second = Lane(), Lane()
    queue.put(first, 1, b"a")
    queue.put(second, 2, b"b")
    queue.put(first, 3, b"c")

    assert queue.put(second, 4, b"d") == 1

    assert drain(queue, first) == [3]
    assert drain(queue, second) == [2, 4]


def test_drop_newest_refuses_the_new_trace_and_keeps_the_queue() -> None:
    queue = ForwardQueue(2, 1 << 20, WhenFull.DROP_NEWEST)
    lane = Lane()
    queue.put(lane, 1, b"a")
    queue.put(lane, 2, b"b")

    assert queue.put(lane, 3, b"c") == 1

    assert drain(queue, lane) == [1, 2]


@pytest.mark.parametrize("policy", list(WhenFull))
def test_the_byte_bound_holds_as_well_as_the_item_bound(policy: WhenFull) -> None:
    queue = ForwardQueue(100, 1000, policy)
    lane = Lane()
    for trace_id in range(10):
        queue.put(lane, trace_id, b"x" * 300)
        assert queue.size_bytes <= 1000
    assert queue.items == 3


def test_drop_oldest_makes_room_for_a_large_trace_by_evicting_several() -> None:
    queue = ForwardQueue(100, 1000, WhenFull.DROP_OLDEST)
    lane = Lane()
    for trace_id in range(4):
        queue.put(lane, trace_id, b"x" * 250)

    assert queue.put(lane, 9, b"y" * 700) == 3

    assert drain(queue, lane) == [3, 9]


@pytest.mark.parametrize("policy", list(WhenFull))
def test_a_trace_over_the_whole_byte_bound_goes_alone_into_an_empty_queue(
    policy: WhenFull,
) -> None:
    queue = ForwardQueue(100, 1000, policy)
    lane = Lane()
    assert queue.put(lane, 1, b"z" * 5000) == 0
    assert queue.size_bytes == 5000
    assert queue.put(lane, 2, b"a") == 1  # whichever policy, one of the two gives way


def test_a_stalled_lane_does_not_let_the_arrival_order_grow_without_bound() -> None:
    """Traces taken from a flowing lane while an old one waits in a stalled lane leave holes
    in the order drop_oldest keeps; they are compacted away."""
    queue = ForwardQueue(100_000, 1 << 30, WhenFull.DROP_OLDEST)
    stalled, flowing = Lane(), Lane()
    queue.put(stalled, 0, b"old")
    for trace_id in range(1, 50_001):
        queue.put(flowing, trace_id, b"x")
        assert queue.take(flowing) == (trace_id, b"x")
    assert len(queue._order) < 10_000
    assert queue.take(stalled) == (0, b"old")


def test_evicting_across_a_stalled_lane_keeps_every_lane_in_order() -> None:
    queue = ForwardQueue(5, 1 << 20, WhenFull.DROP_OLDEST)
    stalled, flowing = Lane(), Lane()
    for trace_id in range(3):
        queue.put(stalled, trace_id, b"s")
    for trace_id in range(100, 110):
        queue.put(flowing, trace_id, b"f")
        if trace_id % 2:
            queue.take(flowing)
    assert queue.items <= 5
    stalled_left, flowing_left = drain(queue, stalled), drain(queue, flowing)
    assert stalled_left == sorted(stalled_left)
    assert flowing_left == sorted(flowing_left)
    assert stalled_left == []  # the stalled lane's traces were the oldest: they went first


def test_clear_empties_a_lane_and_frees_its_share() -> None:
    queue = ForwardQueue(10, 1 << 20, WhenFull.DROP_OLDEST)
    kept, cleared = Lane(), Lane()
    queue.put(kept, 1, b"k")
    queue.put(cleared, 2, b"cc")
    queue.put(cleared, 3, b"cc")

    assert queue.clear(cleared) == 2

    assert (queue.items, queue.size_bytes) == (1, 1)
    assert drain(queue, kept) == [1]


@pytest.mark.asyncio
async def test_a_waiting_lane_wakes_when_a_trace_arrives() -> None:
    queue = ForwardQueue(10, 1 << 20, WhenFull.DROP_OLDEST)
    lane = Lane()
    waiting = asyncio.create_task(lane.wait(10.0))
    await asyncio.sleep(0)
    queue.put(lane, 1, b"x")
    assert await asyncio.wait_for(waiting, 1.0) is True


@pytest.mark.asyncio
async def test_an_idle_lane_says_so_after_its_timeout() -> None:
    assert await Lane().wait(0.01) is False

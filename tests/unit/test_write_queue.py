"""The writers' queue: bounded in files and bytes, FIFO, and owner of whatever it was given."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tap_emulator.write.queue import Publication, WriteQueue


def files(*sizes: int, stem: str = "s") -> list[Publication]:
    return [Publication(stem, n, bytes(size)) for n, size in enumerate(sizes, 1)]


def release_all(queue: WriteQueue) -> list[Publication]:
    taken = queue.take(1000)
    for publication in taken:
        queue.release(publication)
    return taken


@pytest.mark.asyncio
async def test_put_waits_while_the_queue_is_full_then_resumes() -> None:
    queue = WriteQueue(max_items=2, max_bytes=1 << 20)
    await queue.put(files(1))
    await queue.put(files(1))
    third = asyncio.create_task(queue.put(files(1)))
    await asyncio.sleep(0.05)
    assert not third.done()
    assert queue.unpublished == 3

    release_all(queue)
    await asyncio.wait_for(third, 5)
    assert queue.items == 1


def test_byte_bound_holds_both_ways() -> None:
    queue = WriteQueue(max_items=100, max_bytes=64 * 1024)
    assert queue.try_put(files(60 * 1024))
    assert not queue.try_put(files(8 * 1024))
    assert queue.try_put(files(4 * 1024))  # exactly at the bound still fits


@pytest.mark.asyncio
async def test_a_group_bigger_than_the_queue_is_admitted_alone_when_it_is_empty() -> None:
    queue = WriteQueue(max_items=100, max_bytes=64 * 1024)
    assert queue.try_put(files(1))
    big = asyncio.create_task(queue.put(files(200 * 1024)))
    await asyncio.sleep(0.01)
    assert not big.done()
    release_all(queue)
    await asyncio.wait_for(big, 5)
    assert queue.size_bytes == 200 * 1024


@pytest.mark.asyncio
async def test_waiters_are_admitted_in_arrival_order() -> None:
    queue = WriteQueue(max_items=1, max_bytes=1 << 20)
    await queue.put([Publication("s", 1, b"1")])
    waiting = [asyncio.create_task(queue.put([Publication("s", n, b"x")])) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    order = []
    while len(order) < 4:
        taken = queue.take(10)
        order += [p.sequence for p in taken]
        for publication in taken:
            queue.release(publication)
        await asyncio.sleep(0)
    await asyncio.gather(*waiting)
    assert order == [1, 2, 3, 4]


@pytest.mark.asyncio
async def test_a_cancelled_waiter_still_gets_its_whole_group_queued() -> None:
    """The lost-half bug: a stream ended while waiting must leave no file of its message."""
    queue = WriteQueue(max_items=1, max_bytes=1 << 20)
    await queue.put([Publication("first", 1, b"1")])
    halves = [Publication("t-req", 1, b"request"), Publication("t-res", 1, b"response")]
    waiter = asyncio.create_task(queue.put(halves))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    assert queue.unpublished == 3

    taken = release_all(queue) + release_all(queue)
    assert [p.stem for p in taken] == ["first", "t-req", "t-res"]
    assert queue.unpublished == 0


def test_try_put_never_jumps_the_line() -> None:
    queue = WriteQueue(max_items=10, max_bytes=1 << 20)

    async def scenario() -> None:
        assert queue.try_put(files(1, 1, 1, 1, 1, 1, 1, 1, 1, 1))
        waiting = asyncio.create_task(queue.put(files(1, 1)))
        await asyncio.sleep(0)
        first = queue.take(1)
        queue.release(first[0])  # room for one: the waiter's group of two still waits
        assert not queue.try_put(files(1))  # and nobody may pass it
        waiting.cancel()

    asyncio.run(scenario())


def test_give_back_puts_files_at_the_head_in_order() -> None:
    queue = WriteQueue(max_items=10, max_bytes=1 << 20)
    queue.try_put(files(1, 1, 1))
    taken = queue.take(2)
    queue.give_back(taken)
    assert [p.sequence for p in queue.take(3)] == [1, 2, 3]


@pytest.mark.asyncio
async def test_wait_until_empty_reports_a_timeout() -> None:
    queue = WriteQueue(max_items=10, max_bytes=1 << 20)
    assert await queue.wait_until_empty(0.01)
    queue.try_put(files(1))
    assert not await queue.wait_until_empty(0.01)
    release_all(queue)
    assert await queue.wait_until_empty(0.01)

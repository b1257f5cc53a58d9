"""The relay's queue between Envoy and the emulator: bounded in traces and bytes, `put`
waits while full, one trace over the byte bound is admitted alone."""

from __future__ import annotations

import asyncio

import pytest

from tap_emulator.tools.relay.queue import Item, TraceQueue


def item(size: int) -> Item:
    return Item(b"", 1, b"x" * size)


@pytest.mark.asyncio
async def test_queue_put_waits_while_the_item_bound_is_reached() -> None:
    queue = TraceQueue(max_items=2, max_bytes=1 << 20)
    await queue.put(item(1))
    await queue.put(item(1))
    assert queue.is_full_for(item(1))
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
    assert not queue.is_full_for(item(500))
    await asyncio.wait_for(queue.put(item(500)), 1.0)
    assert queue.bytes == 500
    assert await queue.get(0.01) is not None
    assert await queue.get(0.01) is None

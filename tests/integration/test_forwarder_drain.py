"""The forwarder in this process, its tool away: a drain that comes right after the traces
(before any sender's stream task has run) still counts every trace it drops."""

from __future__ import annotations

import asyncio

import pytest

from tap_emulator.forward.forwarder import Forwarder, ForwardOptions
from tap_emulator.forward.frames import Announced
from tap_emulator.observe.metrics import Metrics
from tests.helpers.harness import free_port

SENDERS = [
    Announced("sidecar~10.0.0.1~a.ns~ns.svc.cluster.local", "a.ns", "ns", "f5-tap-x-inbound"),
    Announced("sidecar~10.0.0.2~b.ns~ns.svc.cluster.local", "b.ns", "ns", "f5-tap-x-outbound"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("yield_first", [False, True], ids=["at-once", "after-a-turn"])
async def test_a_drain_with_the_tool_away_counts_every_queued_trace(yield_first: bool) -> None:
    metrics = Metrics()
    forwarder = Forwarder(ForwardOptions(target=f"127.0.0.1:{free_port()}"), metrics)
    await forwarder.start()
    try:
        for n in range(55):
            forwarder.offer(SENDERS[n % 2], n + 1, [b"trace-%d" % n])
        if yield_first:
            await asyncio.sleep(0)  # one loop turn: the senders' stream tasks start
        dropped = await forwarder.drain(0.0)
    finally:
        await forwarder.close()
    print(f"observed: dropped at shutdown {dropped}, forwarded {forwarder.forwarded}")
    assert (dropped, forwarder.forwarded) == (55, 0)
    assert forwarder.dropped == 55

"""Stream slots: per source, per peer address, and what readiness hears of them."""

from __future__ import annotations

import asyncio

import pytest

from tap_emulator.ingest.streams import OpenStream, Refusal, StreamLimits, StreamRegistry
from tap_emulator.labels import RejectReason, Source, StreamOutcome
from tap_emulator.netaddr import peer_address


def registry(total: int = 4, per_peer: int = 2) -> StreamRegistry:
    return StreamRegistry(
        {
            Source.TAP: StreamLimits(total, per_peer),
            Source.EXT_PROC: StreamLimits(100, 100, names=("a", "b")),
        }
    )


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:10.0.0.7:5123", "10.0.0.7"),
        ("ipv6:[::1]:443", "::1"),
        ("unix:/run/tap.sock", "unix:/run/tap.sock"),
    ],
)
def test_a_peer_is_its_address_without_the_port(peer: str, address: str) -> None:
    assert peer_address(peer) == address


@pytest.mark.asyncio
async def test_one_peer_holds_at_most_its_share_and_others_are_still_served() -> None:
    slots = registry(total=4, per_peer=2)
    first = [slots.open(Source.TAP, f"ipv4:10.0.0.1:{port}") for port in (1, 2, 3)]
    assert isinstance(first[0], OpenStream) and isinstance(first[1], OpenStream)
    assert isinstance(first[2], Refusal) and first[2].reason is RejectReason.PEER_LIMIT
    assert "max_streams_per_peer" in first[2].details
    assert isinstance(slots.open(Source.TAP, "ipv4:10.0.0.2:1"), OpenStream)


@pytest.mark.asyncio
async def test_a_full_source_refuses_and_readiness_hears_it() -> None:
    slots = registry(total=2, per_peer=2)
    opened = [slots.open(Source.TAP, f"ipv4:10.0.0.{n}:1") for n in range(2)]
    refused = slots.open(Source.TAP, "ipv4:10.0.0.9:1")
    assert isinstance(refused, Refusal) and refused.reason is RejectReason.STREAM_LIMIT
    assert "max_concurrent_streams" in refused.details
    assert slots.full() is not None
    stream = opened[0]
    assert isinstance(stream, OpenStream)
    slots.close(stream)
    assert slots.full() is None


@pytest.mark.asyncio
async def test_each_source_has_slots_of_its_own() -> None:
    slots = registry(total=1, per_peer=1)
    assert isinstance(slots.open(Source.TAP, "ipv4:10.0.0.1:1"), OpenStream)
    assert isinstance(slots.open(Source.EXT_PROC, "ipv4:10.0.0.1:2"), OpenStream)
    assert slots.open_streams(Source.TAP) == 1 and slots.open_streams(Source.EXT_PROC) == 1


@pytest.mark.asyncio
async def test_closing_twice_frees_one_slot_only() -> None:
    slots = registry(total=2, per_peer=2)
    stream = slots.open(Source.TAP, "ipv4:10.0.0.1:1")
    assert isinstance(stream, OpenStream)
    slots.close(stream)
    slots.close(stream)
    assert slots.open_streams(Source.TAP) == 0


@pytest.mark.asyncio
async def test_a_stream_without_traces_is_ended_as_idle_and_an_active_one_is_not() -> None:
    slots = StreamRegistry({Source.TAP: StreamLimits(10, 10, idle_timeout_seconds=0.2)})
    outcomes: dict[str, StreamOutcome | None] = {}

    async def hold(name: str, active: bool) -> None:
        stream = slots.open(Source.TAP, f"ipv4:10.0.0.1:{len(name)}")
        assert isinstance(stream, OpenStream)
        try:
            for _ in range(10):
                await asyncio.sleep(0.05)
                if active:
                    stream.active()
        except asyncio.CancelledError:
            outcomes[name] = stream.ended_by
            raise
        finally:
            slots.close(stream)
        outcomes[name] = None

    closer = asyncio.create_task(slots.close_idle_streams())
    results = await asyncio.gather(
        hold("quiet", False), hold("busy!", True), return_exceptions=True
    )
    closer.cancel()
    assert isinstance(results[0], asyncio.CancelledError)
    assert outcomes == {"quiet": StreamOutcome.IDLE, "busy!": None}

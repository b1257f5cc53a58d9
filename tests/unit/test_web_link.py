"""The hand-off between the emulator and the page's process: frames read back as they were
written, and a full socket (or a batch that would overfill it) makes the writers' hook skip
(and count) files instead of queueing them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tap_emulator.web.child import _follow
from tap_emulator.web.link import (
    MAX_BUFFER_BYTES,
    PageProcess,
    _Channel,
    file_frame,
    status_frame,
)
from tap_emulator.web.live import LivePage
from tests.helpers.captures import buffered, request_headers


@dataclass
class Published:
    stem: str
    sequence: int
    payload: bytes


class Transport:
    """What the hook needs of a transport: writes, and how much it still buffers."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.buffered = 0  # bytes the kernel has not taken yet

    def writelines(self, data: list[bytes]) -> None:
        self.written.append(b"".join(data))

    def get_write_buffer_size(self) -> int:
        return self.buffered


SAMPLES = {"messages": 3.0, "files": 3.0, "bytes": 10.0, "droppedFiles": 0.0}
SAMPLES |= {"droppedTransactions": 0.0, "refusedStreams": 0.0, "openStreams": 1.0}
SAMPLES |= {"queueItems": 0.0, "queueCapacityItems": 10.0}


@pytest.mark.asyncio
async def test_frames_reach_the_page_as_they_were_sent() -> None:
    page = LivePage(Path("/out"), 100)
    reader = asyncio.StreamReader()
    payload = buffered(request_headers(), [(":status", "200")])
    for sequence in (1, 2):
        reader.feed_data(b"".join(file_frame("svc-" + "ab" * 16, sequence, payload, 12.5)))
    reader.feed_data(status_frame({"problem": None, "samples": SAMPLES}))
    reader.feed_eof()

    await _follow(reader, page)

    first, second = page.feed.take(), page.feed.take()
    assert first is not None and second is not None
    assert (first.stem, first.sequence, first.payload, first.published_at) == (
        "svc-" + "ab" * 16,
        1,
        payload,
        12.5,
    )
    assert second.sequence == 2
    status: dict[str, Any] = page.status.read()
    assert status["ready"] is True and status["totals"]["files"] == 3.0


def page_on(transport: Transport) -> PageProcess:
    page = PageProcess(Path("/out"), 100, dict)
    channel = _Channel(lambda message: None)
    channel.transport = transport  # type: ignore[assignment]
    page._channel = channel
    return page


@pytest.mark.asyncio
async def test_a_full_socket_makes_the_writers_skip_files_without_waiting() -> None:
    transport = Transport()
    page = page_on(transport)
    item = Published("svc-" + "cd" * 16, 1, b"x" * 100)

    page.offer(item)
    await asyncio.sleep(0)  # the one write per loop iteration
    transport.buffered = MAX_BUFFER_BYTES - 50  # the socket and its buffer are full
    for _ in range(1000):
        page.offer(item)
    await asyncio.sleep(0)

    assert (page.offered, page.skipped) == (1001, 1000)
    assert len(transport.written) == 1
    transport.buffered = 0  # the page's process caught up
    page.offer(item)
    await asyncio.sleep(0)
    assert page.skipped == 1000 and len(transport.written) == 2


@pytest.mark.asyncio
async def test_a_batch_of_large_files_in_one_loop_turn_stays_within_the_buffer() -> None:
    """Files published in one loop turn are framed before the first write: their bytes count
    against the bound as well, or a batch of large files would all be held at once."""
    transport = Transport()
    page = page_on(transport)
    one_mib = b"y" * (1 << 20)
    for sequence in range(1, 41):  # 40 MiB in one turn, against a 16 MiB bound
        page.offer(Published("svc-" + "ab" * 16, sequence, one_mib))
    await asyncio.sleep(0)

    [written] = transport.written
    print(f"observed: {len(written) >> 20} MiB written, {page.skipped} of 40 files skipped")
    assert len(written) <= MAX_BUFFER_BYTES
    assert page.offered == 40 and page.skipped == 40 - len(written) // len(one_mib)
    assert page.skipped >= 40 - MAX_BUFFER_BYTES // len(one_mib)


@pytest.mark.asyncio
async def test_files_offered_while_the_page_is_down_are_counted_as_skipped() -> None:
    page = PageProcess(Path("/out"), 100, dict)
    page.offer(Published("svc-" + "ef" * 16, 1, b"x"))

    assert page.skipped == 1

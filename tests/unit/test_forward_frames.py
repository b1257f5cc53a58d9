"""The socket between the emulator and its forwarding process: frames survive any cut."""

from __future__ import annotations

import random

from tap_emulator.forward import frames
from tap_emulator.forward.child import ChildOptions
from tap_emulator.forward.forwarder import ForwardOptions
from tap_emulator.forward.policy import WhenFull


def a_stream() -> bytes:
    parts = [
        frames.sender_frame(
            0, "sidecar~10.0.0.7~p.ns~ns.svc.cluster.local", "p.ns", "ns", "t-inbound"
        )
    ]
    parts.append(frames.sender_frame(1, "", "", None, ""))
    for n in range(50):
        payload = bytes([n]) * (n * 37)
        parts += [frames.trace_head(n % 2, 2**64 - 1 - n, len(payload)), payload]
    parts.append(frames.drain_frame(12.5))
    return b"".join(parts)


def read_all(chunks: list[bytes]) -> list[frames.Trace | frames.Other]:
    reader = frames.FrameReader()
    return [frame for chunk in chunks for frame in reader.feed(chunk)]


def test_a_stream_fed_whole_gives_back_every_frame() -> None:
    read = read_all([a_stream()])
    assert len(read) == 2 + 50 + 1
    first, second = read[0], read[1]
    assert isinstance(first, frames.Other) and isinstance(second, frames.Other)
    assert frames.read_sender(first.body) == (
        0,
        frames.Announced("sidecar~10.0.0.7~p.ns~ns.svc.cluster.local", "p.ns", "ns", "t-inbound"),
    )
    assert frames.read_sender(second.body) == (1, frames.Announced("", "", None, ""))
    traces = [frame for frame in read if isinstance(frame, frames.Trace)]
    assert [(t.sender, t.trace_id, t.payload) for t in traces] == [
        (n % 2, 2**64 - 1 - n, bytes([n]) * (n * 37)) for n in range(50)
    ]
    last = read[-1]
    assert isinstance(last, frames.Other) and last.kind == frames.DRAIN
    assert frames.read_drain(last.body) == 12.5


def test_a_stream_cut_anywhere_gives_back_the_same_frames() -> None:
    data = a_stream()
    whole = read_all([data])
    chooser = random.Random(7)
    for _ in range(50):
        cuts = sorted(chooser.sample(range(1, len(data)), 20))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert read_all(chunks) == whole


def test_a_byte_at_a_time_gives_back_the_same_frames() -> None:
    data = a_stream()
    assert read_all([data[i : i + 1] for i in range(len(data))]) == read_all([data])


def test_the_process_options_survive_their_trip_as_json() -> None:
    options = ChildOptions(
        forward=ForwardOptions(
            target="tool.tools.svc.cluster.local:9000",
            queue_max_items=7,
            queue_max_bytes=1 << 20,
            when_full=WhenFull.DROP_NEWEST,
            max_message_bytes=1 << 22,
            max_streams=3,
        ),
        fd=9,
        tls_ca_file="/etc/tls/ca.crt",
        log_level="debug",
        log_format="json",
    )
    assert ChildOptions.from_json(options.to_json()) == options

"""Forward, the forwarding process: runs the forwarder (queue, one stream per sender, the
connection to the tool) on an event loop of its own, fed by the emulator over a socket.

The emulator starts it as `python -m tap_emulator.forward.child OPTIONS_JSON` with the socket
on file descriptor `fd` of the options. gRPC's cost per message written is paid here, on
another core, not on the emulator's event loop, which only copies each trace into the socket.
It reports on stdout, one JSON object per line: `{"status": {...}}` every quarter of a second
and whenever the connection's state changes, and `{"done": {...}}` once drained. It exits after
a drain frame (or when the emulator goes away: end of file), and logs to stderr like the
emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tap_emulator.forward import frames
from tap_emulator.forward.forwarder import Forwarder, ForwardOptions
from tap_emulator.forward.policy import WhenFull
from tap_emulator.labels import ForwardDrop
from tap_emulator.observe.logs import configure_logging
from tap_emulator.observe.metrics import Metrics

STATUS_EVERY_SECONDS = 0.25
# After the emulator went away without a drain: what is queued gets this long.
_ORPHAN_DRAIN_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class ChildOptions:
    """What the forwarding process is started with (passed as JSON)."""

    forward: ForwardOptions
    fd: int
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    log_level: str = "info"
    log_format: str = "text"

    def to_json(self) -> str:
        forward = dataclasses.asdict(self.forward)
        forward["when_full"] = self.forward.when_full.value
        rest = {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}
        return json.dumps({**rest, "forward": forward})

    @classmethod
    def from_json(cls, text: str) -> ChildOptions:
        loaded = json.loads(text)
        forward = loaded.pop("forward")
        forward["when_full"] = WhenFull(forward["when_full"])
        return cls(forward=ForwardOptions(**forward), **loaded)


def credentials(options: ChildOptions) -> grpc.ChannelCredentials | None:
    paths = (options.tls_ca_file, options.tls_cert_file, options.tls_key_file)
    if not any(paths):
        return None
    ca, cert, key = (Path(path).read_bytes() if path else None for path in paths)
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def status(forwarder: Forwarder, metrics: Metrics) -> dict[str, Any]:
    """The forwarder's counters and gauges, for the emulator's metric table."""
    registry = metrics.registry

    def total(name: str, **labels: str) -> float:
        return registry.get_sample_value(f"tap_emulator_forward_{name}_total", labels) or 0.0

    return {
        "forwarded": total("messages"),
        "bytes": total("bytes"),
        "confirmed": total("confirmed"),
        "unconfirmed": total("unconfirmed"),
        "streams_opened": total("streams_opened"),
        "dropped": {reason.value: total("dropped", reason=reason.value) for reason in ForwardDrop},
        "queue_items": forwarder.queue.items,
        "queue_bytes": forwarder.queue.size_bytes,
        "streams_open": forwarder.open_streams(),
        "state": forwarder.state.value,
    }


def report(kind: str, body: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps({kind: body}) + "\n")
    sys.stdout.flush()


@dataclass
class _Feed(asyncio.Protocol):
    """The socket from the emulator: announced senders, traces, and the drain."""

    forwarder: Forwarder
    ended: asyncio.Future[float]  # the drain's seconds, once asked (or the emulator is gone)
    reader: frames.FrameReader = field(default_factory=frames.FrameReader)
    senders: dict[int, frames.Announced] = field(default_factory=dict)

    def data_received(self, data: bytes) -> None:
        offer = self.forwarder.offer
        senders = self.senders
        for frame in self.reader.feed(data):
            if isinstance(frame, frames.Trace):
                offer(senders[frame.sender], frame.trace_id, [frame.payload])
            elif frame.kind == frames.SENDER:
                index, sender = frames.read_sender(frame.body)
                senders[index] = sender
            elif frame.kind == frames.DRAIN and not self.ended.done():
                self.ended.set_result(frames.read_drain(frame.body))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(_ORPHAN_DRAIN_SECONDS)


async def run(options: ChildOptions) -> None:
    metrics = Metrics()
    forwarder = Forwarder(options.forward, metrics, credentials(options))
    await forwarder.start()
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[float] = loop.create_future()
    connection = socket.socket(fileno=options.fd)
    transport, _ = await loop.connect_accepted_socket(lambda: _Feed(forwarder, ended), connection)
    reporting = asyncio.create_task(_report_status(forwarder, metrics))
    dropped = 0
    try:
        within_seconds = await ended
        dropped = await forwarder.drain(within_seconds)
    finally:
        reporting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporting
        await forwarder.close()
        transport.close()
    report("done", {"dropped_at_shutdown": dropped, **status(forwarder, metrics)})


async def _report_status(forwarder: Forwarder, metrics: Metrics) -> None:
    state = forwarder.state
    while True:
        report("status", status(forwarder, metrics))
        for _ in range(5):  # the connection's state, more often than the rest
            await asyncio.sleep(STATUS_EVERY_SECONDS / 5)
            if forwarder.state is not state:
                state = forwarder.state
                break


def main() -> None:
    # The emulator decides when this process ends (a drain frame, or end of file): a Ctrl-C
    # in a terminal must not end it before the emulator has drained it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    options = ChildOptions.from_json(sys.argv[1])
    configure_logging(options.log_level, options.log_format)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        asyncio.run(run(options))
    else:
        uvloop.run(run(options))


if __name__ == "__main__":
    main()

"""One load-generator process: simulated proxies streaming pre-serialized tap messages.

Global streams ``--stream-base`` .. ``--stream-base + --streams - 1`` are opened, two per
simulated proxy (one HTTP/2 connection each): even streams are the proxy's inbound tap,
odd ones its outbound tap. The first message of each stream carries the Istio-like
identifier. Messages come from `payloads` (built once per process) and are made unique by
splicing each transaction's trace ids in, so the files they must become are known.

- closed loop (``--rate 0``): each stream writes as fast as HTTP/2 flow control lets it;
- open loop (``--rate R``): this process offers R messages/s in total, spread evenly over
  its streams; each message has a scheduled send time, and when a stream falls behind it
  catches up at once (the delay counts in its latency: no coordinated omission). With
  ``--latency-out`` the scheduled times are written per stream for the per-file latency.

A write counts as *sent* when grpcio completed it (flow control let it go). On SIGTERM or
after ``--seconds``, streams stop writing, half-close, and wait for the server's answer;
OK means every file of the stream is on disk, so OK streams' messages are *acknowledged*.

stdout, JSON lines: ``{"event": "streaming"}`` once every stream has written its first
message, then ``{"event": "done", "streams": [...]}``.

    python -m load.client --port 9000 --streams 8 --rate 2000 --seconds 5
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from load import payloads

METHOD = "/envoy.service.tap.v3.TapSinkService/StreamTaps"
CLIENT_OPTIONS: list[tuple[str, int]] = [
    ("grpc.use_local_subchannel_pool", 1),  # one HTTP/2 connection per simulated proxy
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]
MIN_SLEEP_S = 0.002  # open loop: a stream that is early sleeps at least this long
WRITE_FINISH_S = 10.0  # on stop: how long a pending write may take to go out
ANSWER_TIMEOUT_S = 30.0  # then how long the server may take to publish and answer


@dataclass(slots=True)
class StreamResult:
    """One stream's outcome."""

    stream: int
    sent: int = 0
    bytes: int = 0
    code: str = "NONE"
    details: str = ""
    scheduled_ns: array.array[int] = field(default_factory=lambda: array.array("q"))


def emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def stream_messages(catalog: payloads.Catalog, tag: int, stream: int) -> Iterator[bytes]:
    """Every message of one stream, forever; the first carries the identifier."""
    transactions = catalog.transactions
    count = len(transactions)
    offset = catalog.offset(stream)
    identifier = payloads.proxy_of(stream).identifier(payloads.direction_of(stream))
    first = True
    k = 0
    while True:
        transaction = transactions[(offset + k) % count]
        tid = payloads.trace_id_hex(tag, stream, k).encode()
        eid = payloads.varint(payloads.EID_BASE | k)
        for message in transaction.messages:
            rendered = message.render(tid, eid)
            if first:
                rendered = identifier + rendered  # concatenated messages merge
                first = False
            yield rendered
        k += 1


class Generator:
    """Drives this process's streams until told to stop."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.catalog = payloads.build_catalog(
            payloads.Mix.parse(
                args.kinds, args.bodies, args.redact_fraction, args.templates, args.seed
            )
        )
        self.stop = asyncio.Event()
        self.opened = 0
        self.all_open = asyncio.Event()
        self.results = [StreamResult(args.stream_base + i) for i in range(args.streams)]
        self.record = args.latency_out is not None

    async def run(self) -> list[StreamResult]:
        args = self.args
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop.set)
        proxies = sorted({r.stream // 2 for r in self.results})
        target = f"{args.host}:{args.port}"
        channels = {p: grpc.aio.insecure_channel(target, options=CLIENT_OPTIONS) for p in proxies}
        per_stream_rate = args.rate / args.streams if args.rate > 0 else 0.0
        tasks = [
            asyncio.create_task(
                self._stream(channels[r.stream // 2], r, per_stream_rate, i / args.streams)
            )
            for i, r in enumerate(self.results)
        ]
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_open.wait(), args.open_timeout)
            emit("streaming", opened=self.opened, t=time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), args.seconds)
            self.stop.set()
            await asyncio.gather(*tasks)
        finally:
            await asyncio.gather(*(c.close(None) for c in channels.values()))
        return self.results

    def _opened_one(self) -> None:
        self.opened += 1
        if self.opened == len(self.results):
            self.all_open.set()

    async def _write(
        self,
        call: grpc.aio.StreamUnaryCall[bytes, bytes],
        result: StreamResult,
        rate: float,
        phase: float,
    ) -> None:
        messages = stream_messages(self.catalog, self.args.tag, result.stream)
        stop = self.stop
        if rate <= 0:
            for message in messages:
                if stop.is_set():
                    return
                await call.write(message)
                result.sent += 1
                result.bytes += len(message)
                if result.sent == 1:
                    self._opened_one()
            return
        interval = 1.0 / rate
        # time.monotonic(), not loop.time(): uvloop's loop time is cached per iteration
        # (millisecond steps), which would skew the scheduled times by milliseconds.
        clock = time.monotonic
        wall0 = time.time_ns()
        mono0 = clock()
        due = mono0 + phase * interval
        record = result.scheduled_ns.append if self.record else None
        while not stop.is_set():
            now = clock()
            if due > now:
                await asyncio.sleep(max(due - now, MIN_SLEEP_S))
                continue
            message = next(messages)
            if record is not None:
                record(wall0 + int((due - mono0) * 1e9))
            await call.write(message)
            result.sent += 1
            result.bytes += len(message)
            if result.sent == 1:
                self._opened_one()
            due += interval

    async def _stream(
        self, channel: grpc.aio.Channel, result: StreamResult, rate: float, phase: float
    ) -> None:
        method = channel.stream_unary(METHOD, request_serializer=None, response_deserializer=None)
        call: grpc.aio.StreamUnaryCall[bytes, bytes] = method(None)  # written by _write
        writer = asyncio.create_task(self._write(call, result, rate, phase))
        stop_wait = asyncio.create_task(self.stop.wait())
        await asyncio.wait({writer, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if not writer.done():
            # A write the server's end of the call makes fail ends the writer with the call's
            # error: the status is read below and reported, the stream is not OK.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, grpc.aio.AioRpcError):
                await asyncio.wait_for(asyncio.shield(writer), WRITE_FINISH_S)
        stop_wait.cancel()
        if writer.done() and not writer.cancelled() and writer.exception() is None:
            with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
                await asyncio.wait_for(call.done_writing(), WRITE_FINISH_S)
                await asyncio.wait_for(call, ANSWER_TIMEOUT_S)
        if not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        if result.scheduled_ns and len(result.scheduled_ns) > result.sent:
            del result.scheduled_ns[result.sent :]  # the write that never went out
        call.cancel()  # no-op once the call has its status
        code = await call.code()
        result.code = code.name if code is not None else "NONE"
        if result.code != "OK":
            result.details = (await call.details() or "")[:200]
            failed_write = writer.exception() if writer.done() and not writer.cancelled() else None
            if failed_write is not None:
                result.details = f"{result.details} (write: {failed_write!r})"[:300]


def write_latency(path: Path, results: list[StreamResult]) -> None:
    """Binary, per stream: stream id, count, then count scheduled send times (ns, int64)."""
    with path.open("wb") as out:
        for result in results:
            array.array("q", [result.stream, len(result.scheduled_ns)]).tofile(out)
            result.scheduled_ns.tofile(out)


def read_latency(path: Path) -> dict[int, array.array[int]]:
    """The scheduled send times written by `write_latency`, by global stream."""
    data = array.array("q")
    data.frombytes(path.read_bytes())
    out: dict[int, array.array[int]] = {}
    index = 0
    while index < len(data):
        stream, count = data[index], data[index + 1]
        out[stream] = data[index + 2 : index + 2 + count]
        index += 2 + count
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stream-base", type=int, default=0, help="first global stream index")
    parser.add_argument("--streams", type=int, default=8, help="streams in this process")
    parser.add_argument("--rate", type=float, default=0.0, help="msgs/s offered; 0: closed loop")
    parser.add_argument("--seconds", type=float, default=30.0, help="stop after this long")
    parser.add_argument("--tag", type=int, default=1, help="run tag in every trace id (16 bits)")
    parser.add_argument("--open-timeout", type=float, default=15.0)
    parser.add_argument("--latency-out", type=Path, default=None)
    parser.add_argument("--kinds", default=payloads.DEFAULT_KINDS)
    parser.add_argument("--bodies", default=payloads.DEFAULT_BODIES)
    parser.add_argument("--redact-fraction", type=float, default=payloads.DEFAULT_REDACT_FRACTION)
    parser.add_argument("--templates", type=int, default=payloads.DEFAULT_TEMPLATES)
    parser.add_argument("--seed", type=int, default=6)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    generator_holder: list[Generator] = []

    async def go() -> list[StreamResult]:
        generator = Generator(args)
        generator_holder.append(generator)
        return await generator.run()

    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            results = runner.run(go())
    except ImportError:  # pragma: no cover
        results = asyncio.run(go())
    if args.latency_out is not None:
        write_latency(args.latency_out, results)
    emit(
        "done",
        sent=sum(r.sent for r in results),
        bytes=sum(r.bytes for r in results),
        streams=[
            {"stream": r.stream, "sent": r.sent, "code": r.code, "details": r.details}
            for r in results
        ],
    )


if __name__ == "__main__":
    main()

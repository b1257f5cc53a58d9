"""Per-message costs of the emulator's hot path, measured piece by piece in one process.

Replays the benchmark mix's messages (rendered unique, as the load generators send them)
through the product's own pieces, without gRPC, on the current thread: parse
(`FromString`), derive (naming, correlation, redaction, `SerializeToString`, and the
sequence floor's `stat()` per new stem), the metric updates `ingest` and the writer make,
the queue (`Publication`, `try_put`, `_settle`), the writer's syscalls for one file on a
tmpfs, one executor hop, and the candidate "write the trace's bytes as received" (finding
the trace field in the raw message). Each figure is the best of ``--repeat`` passes over
``--messages`` messages, in microseconds per message (or per file).

    python benchmarks/experiments/profile/hotpath.py --messages 20000 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from load import client, payloads  # noqa: E402

from tap_emulator._proto.envoy.service.tap.v3.tap_pb2 import StreamTapsRequest  # noqa: E402
from tap_emulator.config import Settings  # noqa: E402
from tap_emulator.derive.correlate import SegmentNames, SequenceCounter  # noqa: E402
from tap_emulator.derive.deriver import Deriver, NamingPolicy  # noqa: E402
from tap_emulator.derive.naming import Direction  # noqa: E402
from tap_emulator.derive.redact import redact_trace  # noqa: E402
from tap_emulator.ingest.tapsink import identity_of  # noqa: E402
from tap_emulator.observe.metrics import Metrics  # noqa: E402
from tap_emulator.write.pool import Publication, WriterPool  # noqa: E402


def trace_slice(raw: bytes) -> memoryview | None:
    """The bytes of field 3 (`trace`) of a serialized StreamTapsRequest, if it occurs once."""
    view = memoryview(raw)
    index = 0
    end = len(raw)
    found: memoryview | None = None
    while index < end:
        key = 0
        shift = 0
        while True:
            byte = raw[index]
            index += 1
            key |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        field, wire = key >> 3, key & 7
        if wire == 0:
            while raw[index] >= 0x80:
                index += 1
            index += 1
        elif wire == 2:
            length = 0
            shift = 0
            while True:
                byte = raw[index]
                index += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            if field == 3:
                if found is not None:
                    return None  # repeated: protobuf merges; let the parser decide
                found = view[index : index + length]
            index += length
        elif wire == 1:
            index += 8
        elif wire == 5:
            index += 4
        else:
            return None
    return found


def needs_redaction(lowered: bytes, needles: list[bytes]) -> bool:
    return any(needle in lowered for needle in needles)


def best(repeat: int, count: int, run: Callable[[], object]) -> float:
    """Best time of `repeat` runs, in microseconds per item."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times) / count * 1e6


def build_messages(catalog: payloads.Catalog, count: int, streams: int) -> list[bytes]:
    per = max(1, count // streams)
    out: list[bytes] = []
    for g in range(streams):
        generator = client.stream_messages(catalog, 1, g)
        out.extend(next(generator) for _ in range(per))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm/tap-hotpath"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    catalog = payloads.build_catalog(payloads.Mix.parse())
    raws = build_messages(catalog, args.messages, 16)
    n = len(raws)
    settings = Settings()
    metrics = Metrics()
    shutil.rmtree(args.dir, ignore_errors=True)
    pool = WriterPool(args.dir, metrics)
    pool.open()
    policy = NamingPolicy(
        name_format=settings.name_format,
        trace_id_headers=settings.trace_id_headers,
        redact_headers=frozenset(settings.redact_headers),
        default_direction=settings.default_direction,
    )
    first = StreamTapsRequest.FromString(raws[0])
    sender = identity_of(first, Direction.INBOUND)
    results: dict[str, float] = {}

    def fresh_deriver(floor: Callable[[str], int]) -> Deriver:
        return Deriver(
            policy,
            SequenceCounter(floor, settings.correlation_max_entries, 300.0),
            SegmentNames(settings.correlation_max_entries, 300.0),
        )

    results["FromString"] = best(
        args.repeat, n, lambda: [StreamTapsRequest.FromString(r) for r in raws]
    )

    def derive_all(floor: Callable[[str], int]) -> Callable[[], object]:
        def run() -> object:
            deriver = fresh_deriver(floor)
            return [deriver.derive(StreamTapsRequest.FromString(r), sender, 1) for r in raws]

        return run

    parse = results["FromString"]
    results["derive, stat() floor (product)"] = (
        best(args.repeat, n, derive_all(pool.highest_published)) - parse
    )
    results["derive, floor without syscall"] = (
        best(args.repeat, n, derive_all(lambda _stem: 0)) - parse
    )
    stems = [f"reviews.bookinfo:9080-{i:032x}" for i in range(n)]
    results["  of which: stat() per new stem"] = best(
        args.repeat, n, lambda: [pool.highest_published(s) for s in stems]
    )
    parsed_sets = [[StreamTapsRequest.FromString(r) for r in raws] for _ in range(args.repeat)]
    names = frozenset(settings.redact_headers)
    sets = iter(parsed_sets)
    results["  of which: redact_trace (scan)"] = best(
        args.repeat, n, lambda: [redact_trace(p.trace, names) for p in next(sets)]
    )
    parsed = parsed_sets[0]
    results["  of which: SerializeToString"] = best(
        args.repeat, n, lambda: [p.trace.SerializeToString() for p in parsed]
    )
    needles = [name.encode() for name in settings.redact_headers]
    results["candidate: redaction precheck (raw.lower(), 4 substring searches)"] = best(
        args.repeat, n, lambda: [needs_redaction(r.lower(), needles) for r in raws]
    )
    results["candidate: find trace bytes in raw (pure Python)"] = best(
        args.repeat, n, lambda: [bytes(trace_slice(r) or b"") for r in raws]
    )

    def metrics_per_message() -> None:
        received = metrics.messages_received["buffered", "inbound"]
        for r in raws:
            received.inc()
            metrics.received_bytes.inc(len(r))
            metrics.publish_latency.observe(0.001)
            metrics.written_bytes.inc(len(r))
        metrics.files_written.inc(n)

    results["metrics: 3 counter inc + 1 histogram observe"] = best(
        args.repeat, n, metrics_per_message
    )

    def queue_round_trip() -> None:
        now = time.monotonic()
        batch = []
        for i, r in enumerate(raws):
            publication = Publication("s", i, r, now, None)
            pool.try_put(publication)
            batch.append(publication)
            if len(batch) == 64:
                pool._pending.clear()
                pool._settle(batch)
                batch = []
        pool._pending.clear()
        pool._settle(batch)

    results["queue: Publication + try_put + _settle (incl. its metrics)"] = best(
        args.repeat, n, queue_round_trip
    )

    payload_list = [m.file_payload for t in catalog.transactions for m in t.messages]
    rounds = iter(range(args.repeat))

    def write_files() -> None:
        tag = next(rounds)
        files = [
            Publication(f"bench{tag}-{i:032x}", 1, payload_list[i % len(payload_list)])
            for i in range(n)
        ]
        started = time.perf_counter()
        for start in range(0, n, 64):
            pool._publish_batch(files[start : start + 64])
        timings.append(time.perf_counter() - started)

    timings: list[float] = []
    for _ in range(args.repeat):
        write_files()
    results["writer: one file (open, write, close, link, unlink), tmpfs"] = min(timings) / n * 1e6

    async def hops(count: int) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(count):
            await loop.run_in_executor(None, int)

    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        results["executor hop (uvloop), per hop"] = best(
            args.repeat, 2000, lambda: runner.run(hops(2000))
        )
    shutil.rmtree(args.dir, ignore_errors=True)
    mean_wire = sum(len(r) for r in raws) / n
    print(
        f"{n} messages, mean {mean_wire:,.0f} B; microseconds per message (best of {args.repeat}):"
    )
    for name, value in results.items():
        print(f"  {value:8.2f}  {name}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"messages": n, "mean_wire_bytes": mean_wire, "us_per_message": results}, indent=1
            )
            + "\n"
        )


if __name__ == "__main__":
    main()

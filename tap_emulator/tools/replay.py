"""`tap-emulator replay`: stream trace files to a TapSinkService as StreamTaps calls.

Reads Envoy `file_per_tap` output (`.pb`, `.pb_length_delimited`, `.json`, `.pb_text`) and
the emulator's own `.pb` files, files or directories (walked recursively, in sorted order),
and sends every trace in them, in file order, with an identifier given on the command line.
Useful to feed an analysis tool captured traffic, and as load: `--streams` spreads the files
over concurrent calls (each file stays whole on one call, so a streamed trace's segments keep
their order and their correlation), `--repeat` sends everything again, `--rate` paces the
messages. Prints a summary; exits 1 if any call did not end OK, 2 on bad arguments or files.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tap_emulator.labels import Direction
from tap_emulator.netaddr import split_address

EXIT_FAILED = 1
EXIT_USAGE = 2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "replay",
        help="stream trace files (Envoy file_per_tap output or our .pb files) as StreamTaps",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or directories")
    parser.add_argument("--to", required=True, metavar="HOST:PORT", help="the TapSinkService")
    parser.add_argument(
        "--glob",
        action="append",
        default=[],
        metavar="PATTERN",
        help="in directories, only files matching this pattern, e.g. '*.pb' (repeatable)",
    )
    who = parser.add_argument_group("identifier (sent first on every call)")
    who.add_argument("--node-id", default="tap-emulator-replay", help="node.id")
    who.add_argument("--node-cluster", default="", help="node.cluster")
    who.add_argument("--namespace", help="node metadata NAMESPACE (names outbound taps)")
    who.add_argument(
        "--direction",
        choices=tuple(direction.value for direction in Direction),
        default=Direction.INBOUND.value,
        help="tap_id becomes tap-emulator-replay-<direction> (default: inbound)",
    )
    who.add_argument("--tap-id", help="the tap_id as given (overrides --direction)")
    load = parser.add_argument_group("load")
    load.add_argument("--streams", type=int, default=1, help="concurrent calls (default: 1)")
    load.add_argument("--repeat", type=int, default=1, help="send everything K times")
    load.add_argument(
        "--rate",
        type=float,
        default=0.0,
        metavar="MSGS_PER_S",
        help="messages per second over all calls (default: as fast as possible)",
    )
    parser.add_argument(
        "--timeout-seconds",
        type=float,
        default=300.0,
        help="deadline of each call (default: 300)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(run=main)


@dataclass
class StreamReport:
    """What one call sent and how it ended."""

    index: int
    files: int = 0
    messages: int = 0
    code: str = "NOT_STARTED"
    details: str = ""


@dataclass
class Plan:
    """The messages of each call: per file, (trace_id, serialized TraceWrapper) pairs."""

    streams: list[list[list[tuple[int, bytes]]]] = field(default_factory=list)
    files: int = 0
    traces: int = 0


class _Pacer:
    """Spaces messages evenly at `rate` per second across all calls (0: no pacing)."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        slot = max(self._next, now)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)


def plan(paths: list[Path], patterns: tuple[str, ...], streams: int) -> Plan:
    """Read every file once and deal them round-robin over the calls."""
    from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
    from tap_emulator.tools._trace_files import find_trace_files, read_traces

    result = Plan(streams=[[] for _ in range(streams)])
    buffered_ids = [0] * streams
    for number, path in enumerate(find_trace_files(paths, patterns)):
        slot = number % streams
        messages = []
        for raw in read_traces(path):
            trace = TraceWrapper.FromString(raw)
            kind = trace.WhichOneof("trace")
            if kind is not None and kind.endswith("segment"):
                trace_id = getattr(trace, kind).trace_id
            else:
                buffered_ids[slot] += 1
                trace_id = buffered_ids[slot]
            messages.append((trace_id, raw))
        result.streams[slot].append(messages)
        result.files += 1
        result.traces += len(messages)
    return result


async def send_stream(
    target: str,
    identifier: bytes,
    files: list[list[tuple[int, bytes]]],
    repeat: int,
    pacer: _Pacer,
    report: StreamReport,
    timeout_seconds: float,
) -> None:
    from tap_emulator.tools._tap_client import TapCall, encode_request, open_channel, outcome_of

    report.files = len(files) * repeat
    if not files:
        report.code = "OK"
        report.details = "nothing to send"
        return
    async with open_channel(target) as channel:
        call = TapCall(channel)
        try:
            async with asyncio.timeout(timeout_seconds):
                first = True
                for _ in range(repeat):
                    for messages in files:
                        for trace_id, raw in messages:
                            await pacer.wait()
                            await call.write(
                                encode_request(raw, trace_id, identifier if first else b"")
                            )
                            first = False
                            report.messages += 1
                outcome = await call.finish()
        except TimeoutError:
            call.cancel()
            report.code, report.details = (
                "DEADLINE_EXCEEDED",
                f"not done after {timeout_seconds:g}s",
            )
            return
        except Exception as exc:  # the call ended early: its status says why
            outcome = outcome_of(exc)
            if outcome.code == "UNKNOWN" and call.done():
                outcome = await call.ended()
        report.code, report.details = outcome.code, outcome.details


async def replay(args: argparse.Namespace, work: Plan, target: str, identifier: bytes) -> int:
    reports = [StreamReport(index) for index in range(1, len(work.streams) + 1)]
    pacer = _Pacer(args.rate)
    started = time.monotonic()
    await asyncio.gather(
        *(
            send_stream(target, identifier, files, args.repeat, pacer, report, args.timeout_seconds)
            for files, report in zip(work.streams, reports, strict=True)
        )
    )
    elapsed = time.monotonic() - started
    sent = sum(report.messages for report in reports)
    failed = [report for report in reports if report.code != "OK"]
    if args.json:
        summary = {
            "target": target,
            "files": work.files,
            "messages": sent,
            "seconds": round(elapsed, 3),
            "streams": [vars(report) for report in reports],
        }
        print(json.dumps(summary))
    else:
        rate = sent / elapsed if elapsed > 0 else 0.0
        print(
            f"replay: {work.files} files x{args.repeat}, {sent} messages on {len(reports)} "
            f"streams to {target} in {elapsed:.2f}s ({rate:.0f} msgs/s)"
        )
        for report in reports:
            status = report.code + (f": {report.details}" if report.details else "")
            print(f"  stream {report.index}: {report.messages} messages, {status}")
    return EXIT_FAILED if failed else 0


def main(args: argparse.Namespace) -> int:
    from tap_emulator._proto.envoy.config.core.v3.base_pb2 import Node
    from tap_emulator.tools._tap_client import identifier_field
    from tap_emulator.tools._trace_files import TraceFileError

    try:
        split_address(args.to)
        target = args.to
        if args.streams < 1 or args.repeat < 1 or args.rate < 0:
            raise ValueError("--streams and --repeat must be at least 1, --rate not negative")
        work = plan(args.paths, tuple(args.glob), args.streams)
    except (ValueError, TraceFileError) as exc:
        print(f"tap-emulator replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if work.files == 0:
        print("tap-emulator replay: no trace files found", file=sys.stderr)
        return EXIT_USAGE
    node = Node(id=args.node_id, cluster=args.node_cluster)
    if args.namespace:
        node.metadata.fields["NAMESPACE"].string_value = args.namespace
    tap_id = args.tap_id or f"tap-emulator-replay-{args.direction}"
    return asyncio.run(replay(args, work, target, identifier_field(node, tap_id)))

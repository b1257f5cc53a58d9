"""`tap-emulator list`, `show` and `export har|pcap`: capture directories (the emulator's
output, Envoy's file_per_tap output) as people and standard tools read them. Built on
`tap_emulator.captures`; this module only parses arguments and prints.

Output order is directory order (what os.scandir gives), not time order, so that a
directory of a million files starts printing at once in bounded memory; `list --sort time`
orders, holding at most --sort-max records. Exit status: 0, 1 if a file could not be read
or nothing matched `show`, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

EXIT_PROBLEM = 1
EXIT_USAGE = 2
DEFAULT_SORT_MAX = 200_000
STDOUT = Path("-")  # `-o -`
_OUTPUT_HELP = "the file to write; - for standard output"


def _add_reading(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="capture directories or files"
    )
    chosen = parser.add_argument_group("which transactions")
    chosen.add_argument("--authority", help="authority, or a glob of it ('*.svc:8080')")
    chosen.add_argument("--trace", metavar="ID", help="a trace id (header, file name or Envoy's)")
    chosen.add_argument("--status", help="HTTP status: 404, 5xx, 2xx,304, none (no response)")
    chosen.add_argument("--since", metavar="T", help="ISO 8601 time, or a span back: 15m, 2h")
    parser.add_argument(
        "--direction",
        choices=("inbound", "outbound"),
        help="the direction of transactions whose files do not tell it (Envoy's own files, "
        "rejected requests): for a directory known to be one side; known ones are kept",
    )
    chosen.add_argument(
        "--max-open",
        type=int,
        default=None,
        metavar="N",
        help="streamed transactions held open at once before the oldest is flushed (default 20000)",
    )


def _add_http_version(parser: argparse.ArgumentParser, auto_help: str) -> None:
    parser.add_argument(
        "--http-version",
        choices=("auto", "1.1", "2"),
        default="auto",
        help=f"{auto_help}; 1.1 or 2: every transaction so",
    )


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    listing = commands.add_parser(
        "list",
        help="one line per transaction in capture directories or files",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_reading(listing)
    listing.add_argument("--format", choices=("table", "json"), default="table")
    listing.add_argument(
        "--sort", choices=("time",), help="order by time (holds the records: see --sort-max)"
    )
    listing.add_argument(
        "--sort-max",
        type=int,
        default=DEFAULT_SORT_MAX,
        metavar="N",
        help=f"most records --sort holds (default {DEFAULT_SORT_MAX})",
    )
    listing.set_defaults(run=run_list)

    show = commands.add_parser(
        "show",
        help="transactions in full: request, headers, bodies, response, trailers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_reading(show)
    show.add_argument(
        "--proto-descriptors",
        type=Path,
        metavar="FILE",
        help="a FileDescriptorSet (protoc --include_imports --descriptor_set_out) to decode "
        "gRPC messages by the method their path names",
    )
    show.add_argument("--format", choices=("text", "json"), default="text")
    show.set_defaults(run=run_show)

    export = commands.add_parser("export", help="write a HAR 1.2 or pcapng file")
    kinds = export.add_subparsers(dest="export_kind", required=True, metavar="KIND")
    har = kinds.add_parser("har", help="HAR 1.2, one entry per transaction")
    _add_reading(har)
    har.add_argument("-o", "--output", type=Path, required=True, metavar="FILE", help=_OUTPUT_HELP)
    _add_http_version(har, "auto (default): as recorded (gRPC: HTTP/2), else HTTP/1.1")
    har.set_defaults(run=run_export_har)
    pcap = kinds.add_parser(
        "pcap", help="pcapng: a synthesized TCP connection per transaction (HTTP/1.1 or h2c)"
    )
    _add_reading(pcap)
    pcap.add_argument("-o", "--output", type=Path, required=True, metavar="FILE", help=_OUTPUT_HELP)
    pcap.add_argument(
        "--placeholder-addresses",
        action="store_true",
        help="use documentation addresses (server port 80) even where addresses were "
        "recorded, so that Wireshark needs no Decode As for HTTP/2",
    )
    _add_http_version(pcap, "auto (default): HTTP/2 where recorded as such (gRPC), else HTTP/1.1")
    pcap.set_defaults(run=run_export_pcap)


class _UsageError(Exception):
    """Bad arguments; the message says which."""


def _output_name(path: Path) -> str:
    return "standard output" if path == STDOUT else str(path)


@contextlib.contextmanager
def _output(path: Path, binary: bool) -> Iterator[IO[Any]]:
    """`path` opened for writing, or standard output for `-` (left open: it is not ours)."""
    try:
        if path != STDOUT:
            opened = path.open("wb") if binary else path.open("w", encoding="utf-8")
            with opened as out:
                yield out
            return
        if binary and sys.stdout.isatty():
            raise _UsageError("standard output is a terminal: pipe it or name a file with -o")
        if not binary and isinstance(sys.stdout, io.TextIOWrapper):
            sys.stdout.reconfigure(encoding="utf-8")  # HAR is UTF-8 whatever the locale
        stdout: IO[Any] = sys.stdout.buffer if binary else sys.stdout
        yield stdout
        stdout.flush()
    except BrokenPipeError:
        raise  # the reader of standard output left: the command line ends quietly
    except OSError as exc:
        raise _UsageError(f"{_output_name(path)}: cannot write: {exc.strerror}") from exc


def _selection(args: argparse.Namespace) -> Any:
    from tap_emulator.captures.select import Selection, parse_since, parse_statuses

    try:
        return Selection(
            authority=args.authority,
            trace=args.trace,
            statuses=parse_statuses(args.status) if args.status else (),
            since_seconds=parse_since(args.since) if args.since else None,
        )
    except ValueError as exc:
        raise _UsageError(str(exc)) from exc


class _Run:
    """One read of the paths: the selected transactions, and what was wrong on the way."""

    def __init__(self, args: argparse.Namespace, command: str) -> None:
        from tap_emulator.captures.reader import ReadReport

        self.command = command
        self.args = args
        self.selection = _selection(args)
        if args.max_open is not None and args.max_open < 1:
            raise _UsageError("--max-open must be at least 1")
        self.report = ReadReport()
        self.shown = 0
        self.total = 0
        self.unversioned = 0  # shown transactions whose HTTP version nothing recorded

    def _complain(self, why: str) -> None:
        if self.report.unreadable_files <= 20:
            print(f"tap-emulator {self.command}: {why}", file=sys.stderr)

    def transactions(self) -> Iterator[Any]:
        from tap_emulator.captures.reader import read_transactions

        options = {} if self.args.max_open is None else {"max_open": self.args.max_open}
        for transaction in read_transactions(
            self.args.paths, self.report, on_unreadable=self._complain, **options
        ):
            self.total += 1
            if self.args.direction is not None and transaction.direction == "unknown":
                transaction = dataclasses.replace(transaction, direction=self.args.direction)
            if self.selection.matches(transaction):
                self.shown += 1
                if transaction.http_version is None:
                    self.unversioned += 1
                yield transaction

    def finish(self) -> int:
        report = self.report
        notes = [f"{self.shown} of {self.total} transactions, {report.files} files read"]
        if report.twins_skipped:
            notes.append(f"{report.twins_skipped} twins skipped (the binary one read)")
        if report.unreadable_files:
            notes.append(f"{report.unreadable_files} unreadable")
        print(f"tap-emulator {self.command}: " + ", ".join(notes), file=sys.stderr)
        return EXIT_PROBLEM if report.unreadable_files else 0

    def tell_guessed_versions(self) -> None:
        """Say, once, how many were written as HTTP/1.1 for want of a recorded version."""
        if self.args.http_version == "auto" and self.unversioned:
            print(
                f"tap-emulator {self.command}: {self.unversioned} transactions had no recorded "
                "HTTP version and were written as HTTP/1.1: if the traffic was HTTP/2, "
                "export with --http-version 2",
                file=sys.stderr,
            )


def _guarded(command: str, body: Any) -> int:
    try:
        status: int = body()
    except _UsageError as exc:
        print(f"tap-emulator {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return status


def run_list(args: argparse.Namespace) -> int:
    def body() -> int:
        from tap_emulator.captures.render import TABLE_LEGEND, table_header, table_row

        run = _Run(args, "list")
        rows = run.transactions()
        if args.sort == "time":
            rows = iter(_sorted(rows, args.sort_max))
        out = sys.stdout
        if args.format == "table":
            out.write(table_header() + "\n")
            for transaction in rows:
                out.write(table_row(transaction) + "\n")
            print(TABLE_LEGEND, file=sys.stderr)
        else:
            for transaction in rows:
                out.write(json.dumps(transaction.to_dict(), ensure_ascii=False) + "\n")
        out.flush()
        return run.finish()

    return _guarded("list", body)


def _sorted(rows: Iterator[Any], limit: int) -> list[Any]:
    held = []
    for row in rows:
        held.append(row)
        if len(held) > limit:
            raise _UsageError(
                f"--sort holds at most {limit} records (--sort-max) and there are more: "
                "narrow the selection (--since, --authority, --status) or list unsorted"
            )
    held.sort(key=lambda row: (row.time is None, row.time or 0.0))
    return held


def run_show(args: argparse.Namespace) -> int:
    def body() -> int:
        from tap_emulator.captures.detail import describe
        from tap_emulator.captures.exchange import load_exchange
        from tap_emulator.captures.protowire import ProtoDescriptors
        from tap_emulator.captures.render import render_view

        descriptors = None
        if args.proto_descriptors is not None:
            try:
                descriptors = ProtoDescriptors.from_file(args.proto_descriptors)
            except ValueError as exc:
                raise _UsageError(str(exc)) from exc
        run = _Run(args, "show")
        out = sys.stdout
        for transaction in run.transactions():
            view = describe(load_exchange(transaction), descriptors)
            if args.format == "json":
                out.write(json.dumps(view.to_dict(), ensure_ascii=False) + "\n")
            else:
                out.write(("\n" if run.shown > 1 else "") + render_view(view))
        out.flush()
        status = run.finish()
        if run.shown == 0:
            print("tap-emulator show: no transaction matched", file=sys.stderr)
            return EXIT_PROBLEM
        return status

    return _guarded("show", body)


def run_export_har(args: argparse.Namespace) -> int:
    def body() -> int:
        from tap_emulator.captures.export import loaded, write_har

        run = _Run(args, "export har")
        with _output(args.output, binary=False) as out:
            count = write_har(loaded(run.transactions()), out, args.http_version)
        where = _output_name(args.output)
        print(f"tap-emulator export har: {count} entries in {where}", file=sys.stderr)
        run.tell_guessed_versions()
        return run.finish()

    return _guarded("export har", body)


def run_export_pcap(args: argparse.Namespace) -> int:
    def body() -> int:
        from tap_emulator.captures.export import PcapExport

        run = _Run(args, "export pcap")
        with _output(args.output, binary=True) as out:
            export = PcapExport(
                cast(BinaryIO, out),
                placeholder_addresses=args.placeholder_addresses,
                http_version=args.http_version,
            )
            for transaction in run.transactions():
                export.add(transaction)
        where = _output_name(args.output)
        print(
            f"tap-emulator export pcap: {export.connections} connections, "
            f"{export.packets} packets in {where}",
            file=sys.stderr,
        )
        if export.http2_ports:
            ports = sorted(export.http2_ports)
            decode_as = " ".join(f"-d tcp.port=={port},http" for port in ports)
            opened = "FILE" if args.output == STDOUT else args.output
            print(
                f"tap-emulator export pcap: HTTP/2 on TCP port(s) {', '.join(map(str, ports))}"
                ": Wireshark finds HTTP/1.1 on any port but HTTP/2 only on HTTP's own ports; "
                f"open with `wireshark {decode_as} {opened}` (Decode As: HTTP), "
                "or export with --placeholder-addresses",
                file=sys.stderr,
            )
        run.tell_guessed_versions()
        return run.finish()

    return _guarded("export pcap", body)

"""`tap-emulator browse DIR [--listen HOST:PORT]`: its arguments; the page itself is
`tap_emulator.web.browse`, imported only when the command runs (the web server's library
costs the other commands nothing)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

from tap_emulator.netaddr import split_address

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_MAX_TRANSACTIONS = 10_000
EXIT_USAGE = 2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    browse = commands.add_parser(
        "browse",
        help="the web page over capture directories, offline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    browse.add_argument(
        "paths", nargs="+", type=Path, metavar="DIR", help="capture directories or files"
    )
    browse.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"where the page listens (default {DEFAULT_LISTEN}: this machine only; the "
        "page shows captured bodies)",
    )
    browse.add_argument(
        "--max-transactions",
        type=int,
        default=DEFAULT_MAX_TRANSACTIONS,
        metavar="N",
        help=f"the newest N transactions are kept and shown (default {DEFAULT_MAX_TRANSACTIONS})",
    )
    browse.add_argument(
        "--proto-descriptors",
        type=Path,
        metavar="FILE",
        help="a FileDescriptorSet to decode gRPC messages by the method their path names",
    )
    browse.set_defaults(run=run_browse)


def run_browse(args: argparse.Namespace) -> int:
    from tap_emulator.captures.protowire import ProtoDescriptors
    from tap_emulator.web.browse import serve_directory

    try:
        split_address(args.listen)
    except ValueError as exc:
        print(f"tap-emulator browse: --listen: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.max_transactions < 1:
        print("tap-emulator browse: --max-transactions must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    descriptors = None
    if args.proto_descriptors is not None:
        try:
            descriptors = ProtoDescriptors.from_file(args.proto_descriptors)
        except ValueError as exc:
            print(f"tap-emulator browse: {exc}", file=sys.stderr)
            return EXIT_USAGE
    missing = [str(path) for path in args.paths if not path.exists()]
    if missing:
        print(f"tap-emulator browse: not found: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(
            serve_directory(args.paths, args.listen, args.max_transactions, descriptors)
        )
    return 0

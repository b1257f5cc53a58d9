"""The `tap-emulator relay` subcommand: flags generated from the settings table, logging
set up as `serve` does, signals (the first stops reading and drains, a second exits at
once), and the exit status."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import re
import signal
import sys

from tap_emulator.config import ConfigError, add_setting_flags, build_table
from tap_emulator.observe.logs import configure_logging
from tap_emulator.tools.relay.relay import EXIT_FAILED, Relay
from tap_emulator.tools.relay.settings import ENDS, RelaySettings

log = logging.getLogger("tap_emulator.relay")

EXIT_USAGE = 2
_FIELDS = {item.name for item in dataclasses.fields(RelaySettings)}

DESCRIPTION = """\
Stock Envoy cannot stream taps over gRPC (the `streaming_grpc` sink is not implemented), but
its admin endpoint streams them as JSON to whoever attaches with `POST /tap`, for a tap
filter configured with `admin_config`. The relay attaches there, turns each JSON trace into
a `StreamTapsRequest` and sends them on one long-lived StreamTaps call:

    Envoy admin /tap (HTTP/1.1, chunked JSON) -> reader -> bounded queue -> sender -> gRPC

- The identifier (first message of each call) is Envoy's own node from `GET /server_info`
  and the tap id `tap-emulator-relay-<direction>`. `trace_id` is the segment's own id for
  streamed traces, a counter for buffered ones.
- The queue is bounded in traces and bytes. When it is full the reader stops reading from
  Envoy: TCP flow control then holds Envoy's writes, and Envoy keeps the traces it could
  not send in its own memory (unbounded, as measured in docs/relay.md).
- Either side may go away: the reader re-attaches and the sender reconnects, each with
  capped exponential backoff. Traces already read stay queued meanwhile. The sender watches
  the emulator's gRPC health: when it reports NOT_SERVING (a drain, before a restart), the
  relay half-closes its call and waits for the answer, so everything written is accepted.
- Bad input from Envoy is counted and skipped, never fatal: traces heavier than
  --max-trace-bytes, traces that are not TraceWrappers, empty traces. An Envoy whose
  /server_info no stock Envoy would give is refused: the relay says why, forwards what it
  read and exits 1. What can be lost is listed in docs/relay.md.
- On SIGINT/SIGTERM (or after --max-traces) it stops reading, forwards everything read,
  half-closes, waits for the emulator's OK and exits 0. A second signal exits at once.
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "relay",
        help="attach to a stock Envoy's admin /tap and stream its traces to a TapSinkService",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_setting_flags(parser, RelaySettings, ENDS)
    parser.set_defaults(run=main)


def _as_flags(message: str) -> str:
    """A settings error as a command-line user reads it: `--max-trace-bytes: ...`."""
    name = re.match(r"(\w+):", message)
    if name and name.group(1) in _FIELDS:
        return f"--{name.group(1).replace('_', '-')}{message[name.end() - 1 :]}"
    return message


def main(args: argparse.Namespace) -> int:
    given = {name: value for name, value in vars(args).items() if name in _FIELDS}
    try:
        settings = build_table(RelaySettings, given)
    except ConfigError as exc:
        print(f"tap-emulator relay: {_as_flags(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level, settings.log_format)
    return asyncio.run(_run(settings))


async def _run(settings: RelaySettings) -> int:
    relay = Relay(settings)
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.error(
                "second %s: exiting now with %d traces read and not sent",
                signal.Signals(signum).name,
                relay.unsent,
            )
            logging.shutdown()
            sys.stderr.flush()
            os._exit(EXIT_FAILED)
        relay.stop(signal.Signals(signum).name)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    return await relay.run()

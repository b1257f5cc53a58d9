"""Face: the `tap-emulator` command. Parses, loads settings, calls into the rest; the only
place that exits the process.

    tap-emulator serve [--config FILE] [--<setting> VALUE ...]
    tap-emulator inspect PATH...
    tap-emulator list PATH... / show PATH... / export har|pcap PATH... -o FILE
    tap-emulator browse DIR... [--listen HOST:PORT]
    tap-emulator relay --envoy-admin URL --to HOST:PORT ...
    tap-emulator replay PATH... --to HOST:PORT ...

list, show, export, browse, relay and replay register their own subcommands (`register`) and
run them (`args.run(args)`). Every command ends quietly when the reader of its output goes away.
The server (and its HTTP library) is imported only by `serve`.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import select
import sys
from collections.abc import Sequence
from pathlib import Path

from tap_emulator import __version__
from tap_emulator.config import FIELDS, ConfigError, Settings, add_setting_flags, load_settings
from tap_emulator.observe.logs import configure_logging
from tap_emulator.tools import captures_cli, relay, replay
from tap_emulator.web import browse_command
from tap_emulator.write.publisher import OutputDirError

EXIT_USAGE = 2
EXIT_CLOSED_PIPE = 128 + 13  # what a shell reports for a process ended by SIGPIPE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tap-emulator",
        description="Analysis emulator for Envoy's TapSinkService: a .pb file per trace sequence.",
    )
    parser.add_argument("--version", action="version", version=f"tap-emulator {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve StreamTaps and write the files")
    serve.add_argument("--config", type=Path, help="YAML file of settings (flags override it)")
    add_setting_flags(serve, Settings, "settings (each overrides the same key of --config)")

    inspect = commands.add_parser("inspect", help="print trace files as readable JSON")
    inspect.add_argument("files", nargs="+", type=Path, metavar="PATH", help="files or directories")
    inspect.add_argument(
        "--compact", action="store_true", help="one JSON object per line instead of indented"
    )
    captures_cli.register(commands)
    browse_command.register(commands)
    relay.register(commands)
    replay.register(commands)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings a parsed `serve` command line asks for (config file, then flags)."""
    overrides = {name: value for name, value in vars(args).items() if name in FIELDS}
    return load_settings(args.config, overrides)


def _serve(args: argparse.Namespace) -> int:
    from tap_emulator.app import StartupError, run

    try:
        settings = settings_from(args)
    except ConfigError as exc:
        print(f"tap-emulator: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level, settings.log_format)
    log = logging.getLogger("tap_emulator")
    try:
        return run(settings)
    except (ConfigError, StartupError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except OutputDirError as exc:
        log.error("%s", exc)
        return 1


def _inspect(args: argparse.Namespace) -> int:
    from tap_emulator.tools.inspect import inspect_files

    return inspect_files(args.files, sys.stdout, compact=args.compact)


def _refuse_unknown(parser: argparse.ArgumentParser, command: str, extras: list[str]) -> None:
    """Unknown arguments, reported with the subcommand's own usage and a did-you-mean."""
    commands = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    sub = commands.choices[command]
    known = [option for action in sub._actions for option in action.option_strings]
    hints = []
    for extra in extras:
        flag = extra.split("=", 1)[0]
        close = difflib.get_close_matches(flag, known, n=1) if flag.startswith("-") else []
        hints.append(f"{extra} (did you mean {close[0]}?)" if close else extra)
    sub.error(f"unrecognized arguments: {' '.join(hints)}")


def _stdout_reader_gone() -> bool:
    """True if standard output is a pipe whose reader has closed it (`| head` is done)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        _refuse_unknown(parser, args.command, extras)
    if args.command == "serve":
        return _serve(args)
    if args.command == "inspect":
        return _inspect(args)
    status: int = args.run(args)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _run(argv)
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # a socket's, not ours to hide
        # Whoever read our output has all they wanted: end quietly, as `cat` does when
        # SIGPIPE ends it, and keep Python from complaining when it flushes at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_CLOSED_PIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

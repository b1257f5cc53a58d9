"""Face: the `tap-emulator` command. Parses, loads settings, calls into the rest; the only
place that exits the process.

    tap-emulator serve [--config FILE] [--<setting> VALUE ...]
    tap-emulator inspect FILE...
    tap-emulator relay --envoy-admin URL --to HOST:PORT ...
    tap-emulator replay PATH... --to HOST:PORT ...

relay and replay register their own subcommands (`register`) and run them (`main(args)`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tap_emulator import __version__
from tap_emulator.config import (
    FIELDS,
    LOG_FORMATS,
    LOG_LEVELS,
    ConfigError,
    Settings,
    load_settings,
)
from tap_emulator.tools import relay, replay

EXIT_USAGE = 2


class JsonFormatter(logging.Formatter):
    """One JSON object per line; attacker-controlled text is escaped by the encoding."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True)


def configure_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    group = parser.add_argument_group("settings (each overrides the same key of --config)")
    for name, item in FIELDS.items():
        default = getattr(defaults, name)
        if isinstance(default, tuple):
            shown = ",".join(default) or "''"
        elif item.metadata.get("octal"):
            shown = format(default, "04o")
        else:
            shown = str(getattr(default, "value", default))
        extra: dict[str, Any] = {}
        if name == "log_level":
            extra["choices"] = LOG_LEVELS
        elif name == "log_format":
            extra["choices"] = LOG_FORMATS
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=argparse.SUPPRESS,
            metavar=name.split("_")[-1].upper(),
            help=f"{item.metadata['help']} (default: {shown})",
            **extra,
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tap-emulator",
        description="Analysis emulator for Envoy's TapSinkService: a .pb file per trace sequence.",
    )
    parser.add_argument("--version", action="version", version=f"tap-emulator {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve StreamTaps and write the files")
    serve.add_argument("--config", type=Path, help="YAML file of settings (flags override it)")
    _add_setting_flags(serve)

    inspect = commands.add_parser("inspect", help="print .pb files as readable JSON")
    inspect.add_argument("files", nargs="+", type=Path, metavar="FILE")
    inspect.add_argument(
        "--compact", action="store_true", help="one JSON object per line instead of indented"
    )
    relay.register(commands)
    replay.register(commands)
    return parser


def _serve(args: argparse.Namespace) -> int:
    overrides = {name: value for name, value in vars(args).items() if name in FIELDS}
    try:
        settings = load_settings(args.config, overrides)
    except ConfigError as exc:
        print(f"tap-emulator: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level, settings.log_format)
    from tap_emulator.app import run
    from tap_emulator.write.pool import OutputDirError

    try:
        return run(settings)
    except ConfigError as exc:
        logging.getLogger("tap_emulator").error("configuration error: %s", exc)
        return EXIT_USAGE
    except OutputDirError as exc:
        logging.getLogger("tap_emulator").error("%s", exc)
        return 1


def _inspect(args: argparse.Namespace) -> int:
    from tap_emulator.tools.inspect import inspect_files

    return inspect_files(args.files, sys.stdout, compact=args.compact)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "inspect":
        return _inspect(args)
    status: int = args.run(args)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

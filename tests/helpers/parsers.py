"""The `tap-emulator` command line's parsers as tests look at them: one subcommand's parser,
and every field of its flags."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from tap_emulator.cli import build_parser
from tests.helpers.paths import FIXTURES


def subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


def flags_of(parser: argparse.ArgumentParser) -> list[dict[str, Any]]:
    """Every argparse field of every flag that decides how it parses and what help shows."""

    def plain(value: Any) -> Any:
        if value is argparse.SUPPRESS:
            return "==SUPPRESS=="
        if isinstance(value, list | tuple):
            return [plain(each) for each in value]
        return value if isinstance(value, str | int | float | bool | None) else repr(value)

    return [
        {
            "group": group.title,
            "option_strings": action.option_strings,
            "dest": action.dest,
            "default": plain(action.default),
            "metavar": action.metavar,
            "help": action.help,
            "choices": plain(action.choices),
            "required": action.required,
            "nargs": action.nargs,
            "const": plain(action.const),
            "type": getattr(action.type, "__name__", repr(action.type)),
            "action": type(action).__name__,
        }
        for group in parser._action_groups
        for action in group._group_actions
    ]


def write_serve_fixtures(directory: Path) -> None:
    """Record `serve`'s flags and help (at 100 columns) as the flag-generator test expects."""
    os.environ["COLUMNS"] = "100"
    serve = subcommand("serve")
    (directory / "serve_flags.json").write_text(json.dumps(flags_of(serve), indent=1) + "\n")
    (directory / "serve_help.txt").write_text(serve.format_help())


if __name__ == "__main__":
    # After changing serve's settings on purpose: python -m tests.helpers.parsers
    write_serve_fixtures(FIXTURES / "cli")

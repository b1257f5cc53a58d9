"""Regenerate the `config` part of the emulator chart's values schema from the settings table.

`deploy/charts/tap-emulator/values.schema.json` is written by hand except for
`properties.config`, which lists exactly the fields of `tap_emulator.config.Settings`: a
misspelled setting then fails `helm install` with its name, instead of the emulator's pod
failing at start. Types follow what the emulator accepts (sizes may say MiB, lists may be
comma-separated text), ranges come from the emulator's own checks. `--check` fails if the
committed file differs from what this script would write.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import Field
from pathlib import Path
from typing import Any

from tap_emulator import config

SCHEMA = Path(__file__).resolve().parent.parent / "deploy/charts/tap-emulator/values.schema.json"

# Sizes as the emulator reads them: digits with an optional KiB/MiB/GiB unit, any case.
SIZE_PATTERN = r"^\s*[0-9]+\s*([kKmMgG]([iI][bB]?)?)?\s*$"
OCTAL_PATTERN = r"^[0-7]+$"
# HOST:PORT or [IPv6]:PORT; the chart takes container ports from these, so a port is required.
LISTEN_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):[0-9]{1,5}$"

Schema = dict[str, Any]

# Settings the chart itself computes with, so they take plain numbers or stricter text only.
_PORT_NEEDED = "The chart takes a container port, probes and the Service's target from it."
CHART_OVERRIDES: dict[str, Schema] = {
    "listen": {"$comment": _PORT_NEEDED, "type": "string", "pattern": LISTEN_PATTERN},
    "metrics_listen": {"$comment": _PORT_NEEDED, "type": "string", "pattern": LISTEN_PATTERN},
    "output_dir": {
        "$comment": "A volume is mounted there; empty: no files (a pure bridge to forwardTo).",
        "type": "string",
        "pattern": "^(/.*)?$",
    },
    "forward_to": {
        "$comment": "Set it with the chart's forwardTo.",
        "type": "string",
        "pattern": f"^$|{LISTEN_PATTERN}",
    },
    "retention_max_bytes": {
        "$comment": "The chart compares it with the volume's size limit.",
        "type": "integer",
    },
}


def _check_arguments(name: str) -> dict[str, Any]:
    """The bounds or choices the emulator's check of `name` was built with, if it has one."""
    checks: dict[str, Callable[[Any], str | None]] = getattr(config, "_CHECKS", {})
    check = checks.get(name)
    if check is None:
        return {}
    return dict(inspect.getclosurevars(check).nonlocals)


def _bounded(schema: Schema, name: str) -> Schema:
    found = _check_arguments(name)
    if "low" in found and "high" in found:
        schema = {**schema, "minimum": found["low"], "maximum": found["high"]}
    return schema


def _enum_of(kind: str) -> type[enum.Enum] | None:
    candidate = getattr(config, kind, None)
    if isinstance(candidate, type) and issubclass(candidate, enum.Enum):
        return candidate
    return None


def field_schema(name: str, item: Field[Any]) -> Schema:
    """The schema of one setting; unknown field types stop the script with a remedy."""
    kind = str(item.type)
    if kind.endswith(" | None") and kind != "Path | None":
        # An optional setting: what the plain type takes, or null (unset).
        inner = field_schema(name, _retyped(item, kind.removesuffix(" | None")))
        description = inner.pop("description")
        return {"description": description, "anyOf": [inner, {"type": "null"}]}
    schema: Schema
    if kind == "int" and item.metadata.get("octal"):
        schema = {
            "anyOf": [
                _bounded({"type": "integer"}, name),
                {"type": "string", "pattern": OCTAL_PATTERN},
            ]
        }
    elif kind == "int":
        schema = {
            "anyOf": [
                _bounded({"type": "integer"}, name),
                {"type": "string", "pattern": SIZE_PATTERN},
            ]
        }
    elif kind == "float":
        schema = _bounded({"type": "number"}, name)
    elif kind == "bool":
        schema = {"type": "boolean"}
    elif kind == "Path":
        schema = {"type": "string", "minLength": 1}
    elif kind == "Path | None":
        schema = {"type": ["string", "null"]}
    elif kind == "tuple[str, ...]":
        schema = {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}]}
    elif (members := _enum_of(kind)) is not None:
        schema = {"type": "string", "enum": [member.value for member in members]}
    elif kind == "str":
        allowed = _check_arguments(name).get("allowed")
        schema = {"type": "string", "enum": list(allowed)} if allowed else {"type": "string"}
    else:
        raise SystemExit(
            f"generate_chart_schema: setting {name!r} has type {kind!r}, which this script "
            "cannot map to JSON Schema yet: add a rule for it in field_schema()"
        )
    if name in CHART_OVERRIDES:
        schema = {**_bounded(CHART_OVERRIDES[name], name)}
    return {"description": item.metadata["help"], **schema}


def _retyped(item: Field[Any], kind: str) -> Field[Any]:
    """A copy of `item` that declares another type, for the parts of an optional setting."""
    copy: Field[Any] = dataclasses.field(default=item.default, metadata=item.metadata)
    copy.name, copy.type = item.name, kind
    return copy


def config_schema() -> Schema:
    return {
        "$comment": (
            "Generated from tap_emulator/config.py by scripts/generate_chart_schema.py; "
            "do not edit. Exactly the settings of `tap-emulator serve`."
        ),
        "type": "object",
        "additionalProperties": False,
        "properties": {name: field_schema(name, item) for name, item in config.FIELDS.items()},
    }


def rendered_schema() -> str:
    schema = json.loads(SCHEMA.read_text())
    schema["properties"]["config"] = config_schema()
    return json.dumps(schema, indent=2) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="fail if the committed schema is stale"
    )
    args = parser.parse_args()
    text = rendered_schema()
    if args.check:
        if SCHEMA.read_text() != text:
            print(
                f"stale: {SCHEMA.relative_to(SCHEMA.parents[3])}; "
                "run scripts/generate_chart_schema.py"
            )
            return 1
        return 0
    SCHEMA.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

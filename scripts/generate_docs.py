"""Regenerate docs/settings.md and docs/metrics.md from the code (run as `make docs`).

Both tables come from one place each: the fields of `tap_emulator.config.Settings` and the
metric table in `tap_emulator.observe.Metrics`. `--check` fails if the committed pages differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tap_emulator.app import build
from tap_emulator.config import FIELDS, Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _default(name: str) -> str:
    value = getattr(Settings(), name)
    if isinstance(value, tuple):
        return ", ".join(value) if value else "(none)"
    if FIELDS[name].metadata.get("octal"):
        return f'"{value:04o}"'
    if isinstance(value, bool):
        return str(value).lower()
    shown = str(getattr(value, "value", value))
    return shown if shown else "''"


def _size_of_default(name: str) -> str:
    """' (64 MiB)' after a byte count a person would otherwise count the digits of."""
    value = getattr(Settings(), name)
    if not name.endswith("_bytes") or isinstance(value, bool) or not isinstance(value, int):
        return ""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size and value % size == 0:
            return f" ({value // size} {unit})"
    return ""


def settings_page() -> str:
    lines = [
        "# Settings",
        "",
        "Generated from `tap_emulator/config.py` by `make docs`; do not edit.",
        "",
        "Every setting is a key of the YAML file given with `tap-emulator serve --config FILE`",
        "and a flag `--name-with-dashes` that overrides it. Unknown keys are an error. Sizes",
        "accept `KiB`, `MiB` and `GiB`; lists accept YAML lists or comma-separated text.",
        "",
        "| setting | default | meaning |",
        "|---|---|---|",
    ]
    for name, item in FIELDS.items():
        meaning = item.metadata["help"].replace("|", "\\|")
        lines.append(f"| `{name}` | `{_default(name)}`{_size_of_default(name)} | {meaning} |")
    return "\n".join(lines) + "\n"


def metrics_page() -> str:
    lines = [
        "# Metrics",
        "",
        "Generated from `tap_emulator/observe/metrics.py` by `make docs`; do not edit.",
        "",
        "Served at `/metrics` on `metrics_listen` (default `0.0.0.0:9090`). Label values come",
        "only from the closed sets shown; never from headers, authorities or trace ids.",
        "",
        "| metric | type | labels | meaning |",
        "|---|---|---|---|",
    ]
    metrics = build(Settings()).metrics  # built as `serve` builds it: every table watched
    for family in metrics.registry.collect():
        if not family.name.startswith("tap_emulator"):
            continue
        name = family.name
        if family.type == "counter":
            name += "_total"
        elif family.type == "info":
            name += "_info"
        labels: dict[str, set[str]] = {}
        for sample in family.samples:
            for key, value in sample.labels.items():
                if key != "le" and family.type != "info":
                    labels.setdefault(key, set()).add(value)
        shown = "; ".join(f"`{k}`: {', '.join(sorted(v))}" for k, v in sorted(labels.items()))
        if family.type == "info":
            shown = "`version`, `transport`, `python`"
        lines.append(f"| `{name}` | {family.type} | {shown} | {family.documentation} |")
    lines += [
        "",
        "Also exported: the standard `process_*` metrics (CPU seconds, resident memory, open",
        "file descriptors) of prometheus-client's process collector.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="fail if the committed pages are stale"
    )
    args = parser.parse_args()
    pages = {"settings.md": settings_page(), "metrics.md": metrics_page()}
    stale = (
        [name for name, text in pages.items() if (DOCS / name).read_text() != text]
        if args.check
        else []
    )
    if args.check:
        if stale:
            print(f"stale: {', '.join('docs/' + n for n in stale)}; run `make docs`")
            return 1
        return 0
    DOCS.mkdir(exist_ok=True)
    for name, text in pages.items():
        (DOCS / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Find and read trace files for replay: Envoy `file_per_tap` output and the emulator's own
files. The formats are read by `tap_emulator.captures.formats` (which says how); this adds
the walk over directories, recursive and sorted, that reads twins (`X.pb` beside
`X.pb.json`) once, the binary one."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tap_emulator.captures.formats import (
    SUFFIXES,
    TraceFileError,
    is_shadowed,
    split_length_delimited,
    split_top_level_fields,
    split_traces,
    suffix_of,
    without_shadowed,
)

__all__ = [
    "SUFFIXES",
    "TraceFileError",
    "find_trace_files",
    "read_traces",
    "split_length_delimited",
    "split_top_level_fields",
]


def read_traces(path: Path) -> list[bytes]:
    """The serialized TraceWrappers in one file, in file order."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TraceFileError(f"{path}: cannot read: {exc.strerror}") from exc
    return split_traces(str(path), data)


def find_trace_files(paths: Iterable[Path], patterns: tuple[str, ...] = ()) -> list[Path]:
    """Files named on the command line, in order (twins among them once), then the trace
    files under each directory (recursively, sorted by path; hidden files and twins
    skipped), kept when they match a pattern."""
    found: list[Path] = []
    named: list[str] = []
    for path in paths:
        if path.is_dir():
            found.extend(Path(name) for name in without_shadowed(named))
            named = []
            found.extend(_walk(path, patterns))
        elif path.exists():
            named.append(str(path))
        else:
            raise TraceFileError(f"{path}: no such file or directory")
    found.extend(Path(name) for name in without_shadowed(named))
    return found


def _walk(directory: Path, patterns: tuple[str, ...]) -> Iterator[Path]:
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if suffix_of(path.name) is None or is_shadowed(str(path.parent), path.name):
            continue
        if patterns and not any(path.match(pattern) for pattern in patterns):
            continue
        yield path

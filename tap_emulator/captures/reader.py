"""Read capture directories and files as a stream of transactions, in bounded memory.

A directory is listed with `os.scandir`, one entry at a time (its subdirectories after it,
hidden names skipped), and every trace file is fed to the assembler as it is reached; no
listing is held. The order of what comes out is therefore directory order (for ext4 a hash
order, for tmpfs newest first), not time order. Twins (`X.pb` beside `X.pb.json`) are read
once, the binary one. Files named on their own are read in the order given, twins among
them likewise once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tap_emulator.captures.assemble import DEFAULT_MAX_OPEN, DEFAULT_MAX_OPEN_PIECES, Assembler
from tap_emulator.captures.formats import (
    TraceFileError,
    is_shadowed,
    suffix_of,
    without_shadowed,
)
from tap_emulator.captures.model import Transaction


@dataclass(frozen=True, slots=True)
class TraceFile:
    """One trace file found: its path, and its mtime when the listing gave it."""

    path: str
    mtime: float | None = None


_KEPT_COMPLAINTS = 20


@dataclass(slots=True)
class ReadReport:
    """What a read came across besides transactions."""

    files: int = 0
    twins_skipped: int = 0
    unreadable_files: int = 0
    unreadable: list[str] = field(default_factory=list)  # the first few "path: why"

    def complain(self, why: str) -> None:
        self.unreadable_files += 1
        if len(self.unreadable) < _KEPT_COMPLAINTS:
            self.unreadable.append(why)


def _scan_directory(top: str, report: ReadReport) -> Iterator[TraceFile]:
    pending = [top]
    while pending:
        directory = pending.pop()
        subdirectories = []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        subdirectories.append(entry.path)
                    elif suffix_of(entry.name) is not None and entry.is_file():
                        if is_shadowed(directory, entry.name):
                            report.twins_skipped += 1
                            continue
                        yield TraceFile(entry.path, _mtime(entry))
        except OSError as exc:
            report.complain(f"{directory}: cannot list: {exc.strerror}")
        pending.extend(sorted(subdirectories, reverse=True))


def _mtime(entry: os.DirEntry[str]) -> float | None:
    try:
        return entry.stat().st_mtime
    except OSError:
        return None  # gone since it was listed: reading it will say so


def trace_files(paths: Iterable[str | Path], report: ReadReport) -> Iterator[TraceFile]:
    """Every trace file under `paths`: directories scanned, files as named."""
    named: list[str] = []
    for given in paths:
        path = os.fspath(given)
        if Path(path).is_dir():
            yield from _named(named, report)
            named = []
            yield from _scan_directory(path, report)
        elif Path(path).exists():
            named.append(path)
        else:
            report.complain(f"{path}: no such file or directory")
    yield from _named(named, report)


def _named(paths: list[str], report: ReadReport) -> Iterator[TraceFile]:
    kept = without_shadowed(paths)
    report.twins_skipped += len(paths) - len(kept)
    for path in kept:
        yield TraceFile(path)


def read_transactions(
    paths: Iterable[str | Path],
    report: ReadReport | None = None,
    *,
    max_open: int = DEFAULT_MAX_OPEN,
    max_open_pieces: int = DEFAULT_MAX_OPEN_PIECES,
    on_unreadable: Callable[[str], None] | None = None,
) -> Iterator[Transaction]:
    """The final record of every transaction under `paths`, as soon as it is final."""
    report = report if report is not None else ReadReport()
    assembler = Assembler(max_open=max_open, max_open_pieces=max_open_pieces, report_open=False)
    for found in trace_files(paths, report):
        try:
            with open(found.path, "rb") as handle:
                data = handle.read()
                mtime = found.mtime
                if mtime is None:
                    mtime = os.fstat(handle.fileno()).st_mtime
            report.files += 1
            updates = assembler.feed(found.path, data, mtime=mtime)
        except OSError as exc:
            _unreadable(report, f"{found.path}: cannot read: {exc.strerror}", on_unreadable)
            continue
        except TraceFileError as exc:
            _unreadable(report, str(exc), on_unreadable)
            continue
        for transaction in updates:
            if transaction.final:
                yield transaction
    yield from assembler.flush()


def _unreadable(report: ReadReport, why: str, on_unreadable: Callable[[str], None] | None) -> None:
    report.complain(why)
    if on_unreadable is not None:
        on_unreadable(why)

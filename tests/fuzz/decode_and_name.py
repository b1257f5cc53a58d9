"""The decode-and-name path as one function, with the properties every fuzzer checks.

`Pipeline.feed(raw)` does what the ingest handler does with one message read off a stream,
minus the network and the disk: `StreamTapsRequest.FromString`, the stream's identity from
its first identifier, `Deriver.derive`, then the number the writers would give each file. The
Deriver is the one `app.build` uses (`app.build_deriver`), and the numbers come from the
writers' own `Numbering` over a real scratch directory, so the names it asks about go through
real `stat` calls relative to a directory descriptor.

Properties (`check_name`): the only exception allowed out of decoding is DecodeError, and
every planned file name
- matches `^[A-Za-z0-9._:-]+$`, does not start with `.` or `-`, ends in `.pb`;
- is at most 255 bytes (NAME_MAX);
- joined to the output directory, names a direct child of it.

Used by the hypothesis tests (tests/unit/test_fuzz.py), the atheris targets beside this file and
the corpus replay in `make test`.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import DecodeError

from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
from tap_emulator._proto.envoy.service.tap.v3.tap_pb2 import StreamTapsRequest
from tap_emulator.app import build_deriver
from tap_emulator.config import Settings
from tap_emulator.derive.naming import Identity, NameFormat
from tap_emulator.ingest.tapsink import identity_of
from tap_emulator.labels import Direction
from tap_emulator.layout import NAME_MAX_BYTES, file_name
from tap_emulator.write.directory import DirectoryPublisher
from tap_emulator.write.numbering import Numbering

SAFE_NAME = re.compile(r"[A-Za-z0-9._:-]+")


class UnsafeNameError(AssertionError):
    """A planned file name broke one of the safety properties."""


def check_name(name: str, directory: Path) -> None:
    """Raise UnsafeNameError unless `name` is a safe file name directly inside `directory`."""
    problems = []
    if not SAFE_NAME.fullmatch(name):
        problems.append("characters outside [A-Za-z0-9._:-]")
    if name.startswith((".", "-")):
        problems.append("leading '.' or '-'")
    if not name.endswith(".pb"):
        problems.append("does not end in .pb")
    if len(name.encode("utf-8", "surrogatepass")) > NAME_MAX_BYTES:
        problems.append(f"{len(name.encode('utf-8', 'surrogatepass'))} bytes > {NAME_MAX_BYTES}")
    if name in (".", ".."):
        problems.append("names a directory")
    joined = os.path.normpath(os.path.join(directory, name))  # noqa: PTH118
    if os.path.dirname(joined) != os.path.normpath(directory):  # noqa: PTH120
        problems.append(f"lands outside {directory}: {joined}")
    if problems:
        raise UnsafeNameError(f"{name!r}: {'; '.join(problems)}")


@dataclass
class Fed:
    """What one message became: None if it did not decode, else its planned file names."""

    decoded: bool
    names: list[str] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)


class Pipeline:
    """One emulator's naming state over a scratch output directory."""

    def __init__(
        self,
        directory: Path,
        name_format: NameFormat = NameFormat.PLAIN,
        *,
        max_entries: int = 10_000,
        default_direction: Direction = Direction.INBOUND,
    ) -> None:
        self.directory = directory
        self.publisher = DirectoryPublisher(directory)
        self.publisher.open()
        settings = Settings(
            output_dir=directory,
            name_format=name_format,
            default_direction=default_direction,
            correlation_max_entries=max_entries,
            queue_max_items=max(1, max_entries - 256),
        )
        self.deriver = build_deriver(settings)
        self.numbering = Numbering(self.publisher.exists, None, max_entries, 300.0)
        self._default = default_direction
        self._stream = 0
        self._identity = Identity(default_direction, False, None)
        self._identified = False

    def new_stream(self) -> None:
        """Start a new StreamTaps call: identity is learned again from its messages."""
        if self._stream:
            self.deriver.forget_stream(self._stream)
        self._stream += 1
        self._identity = Identity(self._default, False, None)
        self._identified = False

    def feed(self, raw: bytes) -> Fed:
        """Decode and name one message of the current stream, checking every name."""
        if self._stream == 0:
            self.new_stream()
        try:
            request = StreamTapsRequest.FromString(raw)
        except DecodeError:
            return Fed(decoded=False)
        if not self._identified:
            self._identified = request.HasField("identifier")
            if self._identified:
                self._identity = identity_of(request, self._default)
        derivation = self.deriver.derive(request, self._identity, self._stream)
        fed = Fed(decoded=True)
        for planned in derivation.files:
            name = file_name(planned.stem, self.numbering.first_try(planned.stem, planned.sequence))
            check_name(name, self.directory)
            TraceWrapper.FromString(planned.payload)  # what is written parses back
            fed.names.append(name)
            fed.payloads.append(planned.payload)
        return fed

    def feed_stream(self, messages: Iterable[bytes]) -> list[Fed]:
        self.new_stream()
        return [self.feed(raw) for raw in messages]

    def close(self) -> None:
        """Close the directory descriptor the publisher opened."""
        self.publisher.close()


def scratch_pipeline(name_format: NameFormat = NameFormat.PLAIN) -> Pipeline:
    """A Pipeline for fuzz targets, which libFuzzer ends without running cleanups: its
    directory is removed as soon as the publisher has opened it, so nothing is left behind.
    Name lookups through its descriptor then find nothing, as in an empty directory."""
    directory = Path(tempfile.mkdtemp(prefix="tap-fuzz-"))
    pipeline = Pipeline(directory, name_format)
    directory.rmdir()
    return pipeline


def split_stream(data: bytes) -> list[bytes]:
    """Cut fuzzer bytes into the messages of one stream: varint32-length-delimited records
    (the corpus format); what is left after the last whole record is one more message."""
    messages: list[bytes] = []
    position = 0
    while position < len(data) and len(messages) < 64:
        size, width = _varint(data, position)
        if width == 0 or position + width + size > len(data):
            messages.append(data[position:])
            return messages
        start = position + width
        messages.append(data[start : start + size])
        position = start + size
    return messages


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    for width in range(1, 6):
        if position + width > len(data):
            return 0, 0
        byte = data[position + width - 1]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, width
        shift += 7
    return 0, 0


def length_delimited(messages: Iterable[bytes]) -> bytes:
    out = bytearray()
    for message in messages:
        size = len(message)
        while True:
            byte = size & 0x7F
            size >>= 7
            if size:
                out.append(byte | 0x80)
            else:
                out.append(byte)
                break
        out += message
    return bytes(out)

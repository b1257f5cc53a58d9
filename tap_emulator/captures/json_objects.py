"""Split a byte stream of JSON objects written back to back into one piece per object.

Envoy's admin `/tap` stream (and a `file_per_tap` JSON file of a streamed trace) is a run of
pretty-printed JSON objects with no separator between them. The splitter is incremental (it
accepts the stream in pieces cut anywhere, even inside a string or an escape) and bounded:
an object longer than `max_object_bytes` is skipped as it streams by, without being kept,
and counted in `dropped`. Bytes outside any object other than whitespace are skipped and
counted in `stray_bytes`.

It finds where objects end by tracking braces outside strings; it does not validate the
JSON inside them (the protobuf JSON parser does that next).
"""

from __future__ import annotations

import re

_STRUCTURAL = re.compile(rb'[{}"]')
_IN_STRING = re.compile(rb'["\\]')
_WHITESPACE = b" \t\r\n"


class JsonObjectSplitter:
    """Feed bytes in, get complete top-level objects out (as bytes, in order)."""

    def __init__(self, max_object_bytes: int) -> None:
        if max_object_bytes < 2:
            raise ValueError("max_object_bytes must be at least 2")
        self.max_object_bytes = max_object_bytes
        self.dropped = 0
        self.stray_bytes = 0
        self._buffer = bytearray()
        self._position = 0  # next byte of _buffer to scan
        self._depth = 0
        self._in_string = False
        self._skipping = False  # the current object is over the bound: scan, do not keep
        self._seen = 0  # bytes of the current object already discarded while skipping

    @property
    def pending(self) -> bool:
        """True while an object has started and not yet ended."""
        return self._depth > 0

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Scan `data`; return the objects it completed."""
        found: list[bytes] = []
        buffer = self._buffer
        buffer += data
        position = self._position
        end = len(buffer)
        while position < end:
            if self._depth == 0:
                start = buffer.find(b"{", position)
                stop = end if start < 0 else start
                self.stray_bytes += len(bytes(buffer[position:stop]).strip(_WHITESPACE))
                if start < 0:
                    buffer.clear()
                    position = end = 0
                    break
                del buffer[:start]
                end -= start
                position = 1
                self._depth = 1
                continue
            if self._in_string:
                match = _IN_STRING.search(buffer, position)
                if match is None:
                    position = end
                    break
                if match.group() == b"\\":
                    position = match.end() + 1  # the escaped byte may be in the next piece
                else:
                    self._in_string = False
                    position = match.end()
                continue
            match = _STRUCTURAL.search(buffer, position)
            if match is None:
                position = end
                break
            position = match.end()
            token = match.group()
            if token == b'"':
                self._in_string = True
            elif token == b"{":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    if self._skipping or position > self.max_object_bytes:
                        self.dropped += 1
                    else:
                        found.append(bytes(buffer[:position]))
                    self._skipping = False
                    self._seen = 0
                    del buffer[:position]
                    end -= position
                    position = 0
        if self._depth > 0 and self._seen + min(position, end) > self.max_object_bytes:
            # Too long: keep scanning it but stop keeping it.
            self._skipping = True
            kept = min(position, end)
            self._seen += kept
            del buffer[:kept]
            position -= kept
        self._position = position
        return found

    def reset(self) -> bool:
        """Forget everything (a new stream begins); True if an object was cut short."""
        cut = self._depth > 0
        self._buffer.clear()
        self._position = 0
        self._depth = 0
        self._in_string = False
        self._skipping = False
        self._seen = 0
        return cut

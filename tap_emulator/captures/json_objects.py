"""Split a byte stream of JSON objects written back to back into one piece per object.

Envoy's admin `/tap` stream (and a `file_per_tap` JSON file of a streamed trace) is a run of
pretty-printed JSON objects with no separator between them. The splitter is incremental (it
accepts the stream in pieces cut anywhere, even inside a string or an escape) and bounded:
it keeps at most `max_object_bytes` of an object. An object whose weight passes that bound
is given up at once: counted in `dropped`, its bytes discarded, the rest of it scanned (not
kept) to its closing brace, after which the next object is read as usual. Bytes outside any
object other than whitespace are skipped and counted in `stray_bytes`.

An object's weight is its length plus `value_cost_bytes` for each JSON value in it: objects,
arrays and strings as the scan meets them, and, once it is complete, its commas (which
count numbers and literals). Parsing a JSON value into Python costs tens of bytes however
short its text (`[]` is 2 bytes of text and about 60 parsed), so with a cost near that the
weight bounds what parsing the object will take, not only its text. A cost of 0 bounds the
text alone.

It finds where objects end by tracking braces outside strings; it does not validate the JSON
inside them (the protobuf JSON parser does that next). An object given up is followed to
its end by its braces alone, so a malformed one (an unterminated string, say) hides the
objects after it until the stream is reset.
"""

from __future__ import annotations

import re

_KEPT_TOKEN = re.compile(rb'[{}\["]')  # while keeping an object: depth and values
# While skipping one, depth only: a whole string in one step, else a brace or a quote.
_SKIPPED_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}"]', re.DOTALL)
_IN_STRING = re.compile(rb'["\\]')
_WHITESPACE = b" \t\r\n"
_NOT_BRACES = bytes(byte for byte in range(256) if byte not in b"{}")
_BULK_MIN_BYTES = 512  # below this a skipped stretch is scanned token by token
_BULK_MAX_PASSES = 16  # nesting a bulk skip unwinds before scanning token by token


class JsonObjectSplitter:
    """Feed bytes in, get complete top-level objects out (as bytes, in order)."""

    def __init__(self, max_object_bytes: int, value_cost_bytes: int = 0) -> None:
        if max_object_bytes < 2:
            raise ValueError("max_object_bytes must be at least 2")
        self.max_object_bytes = max_object_bytes
        self.value_cost_bytes = value_cost_bytes
        self.dropped = 0
        self.stray_bytes = 0
        self._buffer = bytearray()
        self._position = 0  # next byte of _buffer to scan
        self._depth = 0
        self._values = 0  # values of the current object met so far
        self._in_string = False
        self._skipping = False  # the current object was given up: scan it, do not keep it
        self._tokens_until = 0  # a bulk skip failed before this position: scan token by token

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
        cost = self.value_cost_bytes
        bound = self.max_object_bytes
        # The common case (keeping an object, in and out of its strings) is inline: it runs
        # once per token of every trace.
        while position < len(buffer):
            if self._depth == 0:
                position = self._start_object(buffer, position)
            elif self._in_string:
                match = _IN_STRING.search(buffer, position)
                if match is None:
                    position = len(buffer)
                elif match.group() == b"\\":
                    position = match.end() + 1  # the escaped byte may be in the next piece
                else:
                    self._in_string = False
                    position = match.end()
            elif self._skipping:
                position = self._skip(buffer, position)
            else:
                match = _KEPT_TOKEN.search(buffer, position)
                if match is None:
                    position = len(buffer)
                    continue
                position = match.end()
                token = match.group()
                if token == b"}":
                    self._depth -= 1
                    if self._depth == 0:
                        position = self._complete(buffer, position, found)
                        continue
                else:
                    self._values += 1
                    if token == b'"':
                        self._in_string = True
                    elif token == b"{":
                        self._depth += 1
                if position + self._values * cost > bound:
                    position = self._give_up(buffer, position)
        self._tokens_until = 0
        if self._skipping:
            dropped = min(position, len(buffer))
            del buffer[:dropped]
            position -= dropped
        elif self._depth > 0 and position + self._values * cost > bound:
            position = self._give_up(buffer, position)
        self._position = position
        return found

    def reset(self) -> bool:
        """Forget everything (a new stream begins); True if an object was cut short (one
        already given up was counted in `dropped` and is not reported again)."""
        cut = self._depth > 0 and not self._skipping
        self._buffer.clear()
        self._position = 0
        self._depth = 0
        self._values = 0
        self._in_string = False
        self._skipping = False
        self._tokens_until = 0
        return cut

    # --- the scan, one step at a time -----------------------------------------------------

    def _start_object(self, buffer: bytearray, position: int) -> int:
        start = buffer.find(b"{", position)
        stop = len(buffer) if start < 0 else start
        self.stray_bytes += len(bytes(buffer[position:stop]).strip(_WHITESPACE))
        if start < 0:
            buffer.clear()
            return 0
        del buffer[:start]
        self._depth = 1
        self._values = 1
        return 1

    def _skip(self, buffer: bytearray, position: int) -> int:
        """Scan on through an object given up, up to its end, the end of the buffer, or a
        string the buffer cuts (left to the string scan)."""
        end = len(buffer)
        while position < end:
            if position >= self._tokens_until:
                quote = buffer.find(b'"', position)
                stretch_end = end if quote < 0 else quote
                long_enough = stretch_end - position >= _BULK_MIN_BYTES
                if long_enough and self._skip_in_bulk(buffer, position, stretch_end):
                    position = stretch_end
                    continue
                self._tokens_until = stretch_end
            match = _SKIPPED_TOKEN.search(buffer, position)
            if match is None:
                return end
            position = match.end()
            token = match.group()
            if token == b'"':
                self._in_string = True
                return position
            if token == b"{":
                self._depth += 1
            elif token == b"}":
                self._depth -= 1
                if self._depth == 0:
                    self._skipping = False
                    return position
        return position

    def _skip_in_bulk(self, buffer: bytearray, start: int, end: int) -> bool:
        """Cross a stretch with no strings in it at C speed, if the object cannot end
        inside it: once nested pairs are taken out, its braces read `}` * a + `{` * b, and
        the depth never falls below depth - a."""
        braces = buffer[start:end].translate(None, _NOT_BRACES)
        for _ in range(_BULK_MAX_PASSES):
            unpaired = braces.replace(b"{}", b"")
            if len(unpaired) == len(braces):
                break
            braces = unpaired
        else:
            return False
        closes = len(braces) - len(braces.lstrip(b"}"))
        if b"{}" in braces or closes >= self._depth:
            return False
        self._depth += len(braces) - 2 * closes
        return True

    def _give_up(self, buffer: bytearray, position: int) -> int:
        self.dropped += 1
        self._skipping = True
        kept = min(position, len(buffer))
        del buffer[:kept]
        return position - kept

    def _complete(self, buffer: bytearray, end: int, found: list[bytes]) -> int:
        with memoryview(buffer) as view:
            whole = bytes(view[:end])
        commas = whole.count(b",") if self.value_cost_bytes else 0
        if end + (self._values + commas) * self.value_cost_bytes > self.max_object_bytes:
            self.dropped += 1
        else:
            found.append(whole)
        del buffer[:end]
        return 0


def json_weight(document: bytes, value_cost_bytes: int) -> int:
    """A whole JSON document's weight, as the splitter weighs objects (counting the
    structural bytes inside strings too: an upper bound, at C speed)."""
    values = (
        document.count(b"{")
        + document.count(b"[")
        + document.count(b'"') // 2
        + document.count(b",")
    )
    return len(document) + values * value_cost_bytes

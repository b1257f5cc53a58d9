"""The emulator with one optimization candidate patched in, in its own process (prototypes).

    python benchmarks/profile/variants.py VARIANT[+VARIANT...] serve [serve flags...]

Each variant monkeypatches the product in this process only, then runs the ordinary
`tap-emulator` command line, so the server logs, serves metrics and drains as the product
does. These are measurement prototypes for the lead engineer, not product code:

- ``product``: no change (the wrapper's own overhead is nil);
- ``asyncio``: the default asyncio event loop instead of uvloop;
- ``passthrough``: redaction scans the parsed headers as in the product; when it replaced
  nothing, the file is the trace's bytes as received (the `trace` field sliced out of the
  raw `StreamTapsRequest`) instead of `SerializeToString`. (A first version that looked for
  the header names in the lowercased raw bytes to skip the scan cost more than it saved:
  8.2 us per message against 4.8 + 2.8 us, `hotpath.py`.)
- ``nostat``: the sequence floor does not `stat()` on the event loop for stems that cannot
  be on disk: one directory scan at start lists the stems present then; a stem neither
  present at start nor evicted from the counter table starts at 0;
- ``nometrics``: the per-message metric updates become no-ops (to price them); only
  ``files_written`` (once per batch) stays, so compare variants by files/s;
- ``inline``: the writer publishes its batch on the event loop thread (no executor hop);
- ``reuseport``: `grpc.so_reuseport=1`, so several processes can share the tap port;
- ``window64k``: a 64 KiB stream window (`grpc.http2.lookahead_bytes`) instead of 256 KiB;
- ``fast``: ``passthrough+nostat``; ``fastest``: ``passthrough+nostat+inline``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hotpath

ALIASES = {
    "fast": ("passthrough", "nostat"),
    "fastest": ("passthrough", "nostat", "inline"),
}

_current_raw: list[bytes] = [b""]


def trace_slice(raw: bytes) -> bytes | None:
    """The bytes of field 3 (`trace`) of a serialized StreamTapsRequest (hotpath.py's reader)."""
    found = hotpath.trace_slice(raw)
    return None if found is None else bytes(found)


def patch_passthrough() -> None:
    from tap_emulator import derive, ingest
    from tap_emulator.derive.deriver import Derivation, TraceKind
    from tap_emulator.derive.naming import Half
    from tap_emulator.derive.redact import redact_trace

    original_decode = ingest.TapSink._decode

    def decode(self: Any, raw: bytes, index: int) -> Any:
        request = original_decode(self, raw, index)
        _current_raw[0] = raw  # derive runs right after, with no await in between
        return request

    ingest.TapSink._decode = decode  # type: ignore[method-assign]

    def as_received(self: Any, trace: Any, result: Any) -> bytes | None:
        """Redact as the product does; when nothing was replaced, the received bytes."""
        result.redactions = redact_trace(trace, self._policy.redact_headers)
        if result.redactions or self._split:
            return None
        return trace_slice(_current_raw[0])

    def buffered(self: Any, trace: Any, envoy_id: int, identity: Any) -> Any:
        name = self._learn(trace.http_buffered_trace.request.headers, envoy_id, identity)
        result = Derivation(TraceKind.BUFFERED)
        payload = as_received(self, trace, result)
        if payload is not None:
            self._add(result, name, None, payload)
            return result
        if not self._split:
            self._add(result, name, None, trace.SerializeToString())
            return result
        for half, dropped in ((Half.REQUEST, "response"), (Half.RESPONSE, "request")):
            part = type(trace)()
            part.http_buffered_trace.CopyFrom(trace.http_buffered_trace)
            part.http_buffered_trace.ClearField(dropped)
            self._add(result, name, half, part.SerializeToString())
        return result

    def segment(self: Any, trace: Any, request_id: int, identity: Any, stream: int) -> Any:
        segment_ = trace.http_streamed_trace_segment
        envoy_id = segment_.trace_id or request_id
        piece = segment_.WhichOneof("message_piece")
        name = self._segments.get(stream, envoy_id)
        if name is None:
            headers = segment_.request_headers.headers if piece == "request_headers" else ()
            name = self._learn(headers, envoy_id, identity)
            self._segments.remember(stream, envoy_id, name)
        result = Derivation(TraceKind.STREAMED_SEGMENT)
        payload = as_received(self, trace, result)
        if payload is None:
            payload = trace.SerializeToString()
        half = None
        if self._split:
            half = Half.REQUEST if piece in derive._REQUEST_PIECES else Half.RESPONSE
        self._add(result, name, half, payload)
        return result

    derive.Deriver._buffered = buffered  # type: ignore[method-assign]
    derive.Deriver._segment = segment  # type: ignore[method-assign]


def patch_nostat() -> None:
    from tap_emulator import correlate
    from tap_emulator.write.pool import SUFFIX, TEMP_PREFIX

    original_init = correlate.SequenceCounter.__init__

    def init(self: Any, floor: Callable[[str], int], *args: Any, **kwargs: Any) -> None:
        original_init(self, floor, *args, **kwargs)
        evicted: set[str] = set()
        self._last._on_evict = evicted.add
        at_start: set[str] | None = None

        def cheap_floor(stem: str) -> int:
            nonlocal at_start
            if at_start is None:
                directory = _output_dir()
                at_start = set()
                if directory is not None:
                    with os.scandir(directory) as entries:
                        for entry in entries:
                            name = entry.name
                            if name.endswith(SUFFIX) and not name.startswith(TEMP_PREFIX):
                                at_start.add(name[: -len(SUFFIX)].rsplit("-", 1)[0])
            if stem in at_start or stem in evicted:
                return floor(stem)
            return 0

        self._floor = cheap_floor

    correlate.SequenceCounter.__init__ = init  # type: ignore[method-assign]


def _output_dir() -> Path | None:
    argv = sys.argv
    for index, arg in enumerate(argv):
        if arg == "--output-dir" and index + 1 < len(argv):
            return Path(argv[index + 1])
        if arg.startswith("--output-dir="):
            return Path(arg.split("=", 1)[1])
    return None


def patch_nometrics() -> None:
    from tap_emulator import observe

    class _Null:
        def inc(self, *_: Any) -> None:
            return None

        def observe(self, *_: Any) -> None:
            return None

    original_init = observe.Metrics.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        null = _Null()
        self.messages_received = dict.fromkeys(self.messages_received, null)
        self.received_bytes = null
        self.publish_latency = null
        self.written_bytes = null
        # files_written stays real (once per batch, as in the product): runners read it.

    observe.Metrics.__init__ = init  # type: ignore[method-assign]


def patch_inline() -> None:
    import asyncio

    from tap_emulator import writer

    async def run_writer(self: Any) -> None:
        backoff = self._retry_initial
        while True:
            if not self._pending:
                self._work.clear()
                await self._work.wait()
                continue
            batch = [
                self._pending.popleft()
                for _ in range(min(self._batch_max_items, len(self._pending)))
            ]
            result = self._publish_batch(batch)
            self._settle(batch[: result.published])
            if result.error is None:
                backoff = self._retry_initial
                await asyncio.sleep(0)
                continue
            self._record_failure(result.error)
            self._pending.extendleft(reversed(batch[result.published :]))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._retry_max)

    writer.WriterPool._run_writer = run_writer  # type: ignore[method-assign]


def patch_reuseport() -> None:
    from tap_emulator import app

    original = app.grpc_server_options

    def options(settings: Any) -> list[tuple[str, int]]:
        return [(k, 1 if k == "grpc.so_reuseport" else v) for k, v in original(settings)]

    app.grpc_server_options = options


def patch_window64k() -> None:
    from tap_emulator import app

    original = app.grpc_server_options

    def options(settings: Any) -> list[tuple[str, int]]:
        return [
            (k, 64 * 1024 if k == "grpc.http2.lookahead_bytes" else v)
            for k, v in original(settings)
        ]

    app.grpc_server_options = options


def patch_asyncio() -> None:
    import asyncio

    from tap_emulator import app

    def run(settings: Any) -> int:
        status: int = asyncio.run(app.serve(settings))
        return status

    app.run = run


PATCHES: dict[str, Callable[[], None]] = {
    "product": lambda: None,
    "asyncio": patch_asyncio,
    "passthrough": patch_passthrough,
    "nostat": patch_nostat,
    "nometrics": patch_nometrics,
    "inline": patch_inline,
    "reuseport": patch_reuseport,
    "window64k": patch_window64k,
}


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    names: list[str] = []
    for part in sys.argv[1].split("+"):
        names.extend(ALIASES.get(part, (part,)))
    unknown = [n for n in names if n not in PATCHES]
    if unknown:
        print(
            f"unknown variants {unknown}; known: {sorted(PATCHES)} and {sorted(ALIASES)}",
            file=sys.stderr,
        )
        return 2
    for name in names:
        PATCHES[name]()
    del sys.argv[1]
    from tap_emulator import cli

    started = time.monotonic()
    status: int = cli.main(sys.argv[1:])
    print(f"variant {'+'.join(names)} ran {time.monotonic() - started:.1f}s", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())

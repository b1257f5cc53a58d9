"""Ingest, shared by every source: from a decoded trace to files owned by the writers.

`Handoff.plan` runs derive on one `StreamTapsRequest` (whichever source built it), counts what
it became, and returns its files as one group of publications; the source then gives the group
to the queue, waiting for room (the TapSinkService: that stream is its sender's tap channel,
and holding it back is right) or not at all (ext_proc: dropped whole, counted, when there is no
room; the tapped proxy's own traffic must never wait for us).

With a forwarder (forward_to), every accepted trace is also offered to it, with the sender's
identity, as the same bytes the files hold; the forwarder never makes a source wait. Without
writers (`output_dir: ''`, a pure bridge) a trace becomes no publications at all: it is derived
(and so redacted and counted) and forwarded only.

`PendingFiles` counts one stream's files still to be published, so that the stream can answer
OK only once every file it produced is on disk, and say so when some were dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tap_emulator._proto.envoy.service.tap.v3.tap_pb2 import StreamTapsRequest
from tap_emulator.derive.deriver import Derivation, Deriver
from tap_emulator.derive.naming import Identity
from tap_emulator.labels import FALLBACK_KINDS, Source
from tap_emulator.observe.metrics import Metrics
from tap_emulator.write.queue import Publication


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sent a trace, as a TapSinkService tool would have been told: the proxy's node and
    the tap id of its capture point (whose last token is the direction)."""

    node_id: str = ""
    cluster: str = ""
    namespace: str | None = None
    tap_id: str = ""


Forward = Callable[[Sender, int, list[bytes]], None]
"""(sender, Envoy's trace id of the request, the payloads of the files a trace became): called
for every accepted trace, after redaction, with exactly the bytes that are written."""


@dataclass(slots=True, eq=False)
class PendingFiles:
    """A stream's files given to the writers and not yet out, and how many were dropped."""

    pending: int = 0
    dropped: int = 0
    _all_out: asyncio.Future[None] | None = field(default=None, repr=False)

    def settle(self, published: bool) -> None:
        self.pending -= 1
        if not published:
            self.dropped += 1
        if self.pending == 0 and self._all_out is not None and not self._all_out.done():
            self._all_out.set_result(None)

    async def wait(self) -> None:
        """Until every file given to the writers is published or dropped."""
        if self.pending:
            self._all_out = asyncio.get_running_loop().create_future()
            await self._all_out


class Handoff:
    """Derive, count, and make publications; one instance serves every source."""

    def __init__(
        self,
        deriver: Deriver,
        metrics: Metrics,
        forward: Forward | None = None,
        *,
        write: bool = True,
    ) -> None:
        self._deriver = deriver
        self._metrics = metrics
        self._forward = forward
        self._write = write

    def plan(
        self,
        request: StreamTapsRequest,
        sender: Identity,
        stream: int,
        source: Source,
        size_bytes: int,
        pending: PendingFiles | None = None,
        arrived: float | None = None,
        origin: Sender | None = None,
    ) -> list[Publication]:
        """The files `request` becomes, counted (and handed to the forwarder, if any, with
        `origin`, the proxy it came from)."""
        derivation = self._deriver.derive(request, sender, stream)
        self._count(derivation, sender, source, size_bytes)
        if self._forward is not None and derivation.files:
            self._forward(
                origin or Sender(), request.trace_id, [f.payload for f in derivation.files]
            )
        if not self._write:
            return []
        when = time.monotonic() if arrived is None else arrived
        settle = pending.settle if pending is not None else None
        if pending is not None:
            pending.pending += len(derivation.files)
        return [
            Publication(planned.stem, planned.sequence, planned.payload, when, settle)
            for planned in derivation.files
        ]

    def forget_stream(self, stream: int) -> None:
        self._deriver.forget_stream(stream)

    def _count(
        self, derivation: Derivation, sender: Identity, source: Source, size_bytes: int
    ) -> None:
        metrics = self._metrics
        metrics.messages_received[source, derivation.kind, sender.direction].inc()
        metrics.received_bytes[source].inc(size_bytes)
        if derivation.sanitized:
            metrics.names_sanitized.inc(derivation.sanitized)
        if derivation.truncated:
            metrics.names_truncated.inc(derivation.truncated)
        if derivation.redactions:
            metrics.redactions.inc(derivation.redactions)
        if derivation.kind in FALLBACK_KINDS:
            metrics.fallback_names[derivation.kind].inc(len(derivation.files))

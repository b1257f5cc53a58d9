"""Ingest, shared by every source: from a decoded trace to files owned by the writers.

`Handoff.plan` runs derive on one `StreamTapsRequest` (whichever source built it), counts what
it became, and returns its files as one group of publications; the source then gives the group
to the queue, waiting for room (the TapSinkService: that stream is its sender's tap channel,
and holding it back is right) or not at all (ext_proc: dropped whole, counted, when there is no
room; the tapped proxy's own traffic must never wait for us).

`PendingFiles` counts one stream's files still to be published, so that the stream can answer
OK only once every file it produced is on disk, and say so when some were dropped.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from tap_emulator._proto.envoy.service.tap.v3.tap_pb2 import StreamTapsRequest
from tap_emulator.derive.deriver import Derivation, Deriver
from tap_emulator.derive.naming import Identity
from tap_emulator.labels import FALLBACK_KINDS, Source
from tap_emulator.observe.metrics import Metrics
from tap_emulator.write.queue import Publication


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

    def __init__(self, deriver: Deriver, metrics: Metrics) -> None:
        self._deriver = deriver
        self._metrics = metrics

    def plan(
        self,
        request: StreamTapsRequest,
        sender: Identity,
        stream: int,
        source: Source,
        size_bytes: int,
        pending: PendingFiles | None = None,
        arrived: float | None = None,
    ) -> list[Publication]:
        derivation = self._deriver.derive(request, sender, stream)
        self._count(derivation, sender, source, size_bytes)
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

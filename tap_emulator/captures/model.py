"""What the capture reader yields: one `Transaction` record per HTTP transaction, small enough
to hold many of (no bodies, no headers beyond the few it names), and the `PieceRef`s that say
where its pieces lie so that a detail view can read them again."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class PieceKind(StrEnum):
    """What one TraceWrapper contributes to its transaction."""

    BUFFERED = "buffered"  # a whole transaction
    BUFFERED_REQUEST = "buffered_request"  # the req half of a buffered trace (req_res names)
    BUFFERED_RESPONSE = "buffered_response"  # its res half
    EMPTY = "empty"  # a streamed segment with no piece: Envoy saw no request headers
    REQUEST_HEADERS = "request_headers"
    REQUEST_BODY_CHUNK = "request_body_chunk"
    REQUEST_TRAILERS = "request_trailers"
    RESPONSE_HEADERS = "response_headers"
    RESPONSE_BODY_CHUNK = "response_body_chunk"
    RESPONSE_TRAILERS = "response_trailers"


class Missing(StrEnum):
    """What a transaction lacks; a closed set."""

    REQUEST = "request"  # the proxy recorded no request (it answered before parsing one)
    REQUEST_HEADERS = "request_headers"  # streamed pieces without their request headers
    RESPONSE = "response"  # no response headers
    SEQUENCE_GAP = "sequence_gap"  # files of the stem between this one's pieces are absent


@dataclass(frozen=True, slots=True)
class PieceRef:
    """Where one piece lies: the `index`th trace of file `source`."""

    source: str
    index: int
    kind: PieceKind
    sequence: int | None = None  # the emulator's `-<seq>.pb`


@dataclass(frozen=True, slots=True)
class SequenceGap:
    """Sequence numbers `first`..`last` of `stem` that no file read so far holds."""

    stem: str
    first: int
    last: int


@dataclass(slots=True)
class Transaction:
    """One HTTP transaction as far as its files tell it. Sizes are of the captured bytes.

    A record, read-only by convention: not frozen because a frozen dataclass of this many
    fields costs a third of the reader's time per file to build."""

    key: str  # stable while the transaction is open: updates of one transaction share it
    final: bool  # False: still open, more pieces may come (the live index sees these)
    origin: str  # "emulator" (one file per piece) or "envoy" (a file_per_tap file)
    streamed: bool
    time: float | None  # epoch seconds
    time_source: str | None  # "recorded" (headers received) or "file_mtime"
    direction: str  # inbound, outbound or unknown
    authority: str | None
    client_namespace: str | None
    method: str | None
    path: str | None
    scheme: str | None
    status: int | None
    grpc_status: int | None
    grpc_message: str | None
    http_version: str | None  # what the headers prove: HTTP/2 (gRPC), HTTP/1.1, or None
    duration_seconds: float | None  # request headers received -> response headers received
    request_body_bytes: int
    response_body_bytes: int
    request_truncated: bool
    response_truncated: bool
    request_content_length: int | None
    response_content_length: int | None
    trace_id: str | None  # from the request headers, by the emulator's default rules
    name_trace_id: str | None  # from the file name
    envoy_trace_id: int | None  # a streamed segment's own id
    client_address: str | None  # downstream remote address, where recorded
    server_address: str | None  # downstream local address (the proxy's listener)
    redacted_headers: tuple[str, ...]
    missing: tuple[Missing, ...]
    sequence_gaps: tuple[SequenceGap, ...]
    evicted: bool  # flushed before the input ended, to keep memory bounded
    pieces: tuple[PieceRef, ...] = field(repr=False)

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def files(self) -> tuple[str, ...]:
        """The files its pieces came from, in piece order, each once."""
        return tuple(dict.fromkeys(piece.source for piece in self.pieces))

    @property
    def envoy_trace_id_hex(self) -> str | None:
        return None if self.envoy_trace_id is None else format(self.envoy_trace_id, "x")

    def trace_ids(self) -> set[str]:
        """Every id a user may know this transaction by (lowercase)."""
        ids = {self.key.lower()}
        for value in (self.trace_id, self.name_trace_id):
            if value:
                ids.add(value.lower())
        if self.envoy_trace_id is not None:
            ids.update({str(self.envoy_trace_id), format(self.envoy_trace_id, "x")})
        return ids

    def iso_time(self) -> str | None:
        if self.time is None:
            return None
        moment = dt.datetime.fromtimestamp(self.time, tz=dt.UTC)
        return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form: every field, times in ISO 8601 UTC, the files listed."""
        shown = {name: getattr(self, name) for name in _PLAIN_FIELDS}
        shown["time"] = self.iso_time()
        shown["complete"] = self.complete
        shown["envoy_trace_id"] = self.envoy_trace_id_hex
        shown["missing"] = [str(item) for item in self.missing]
        shown["redacted_headers"] = list(self.redacted_headers)
        shown["sequence_gaps"] = [
            {"stem": gap.stem, "first": gap.first, "last": gap.last} for gap in self.sequence_gaps
        ]
        shown["files"] = list(self.files)
        shown["pieces"] = [
            {"file": p.source, "index": p.index, "kind": str(p.kind), "sequence": p.sequence}
            for p in self.pieces
        ]
        return shown


_PLAIN_FIELDS = tuple(
    name
    for name in Transaction.__dataclass_fields__
    if name not in {"time", "envoy_trace_id", "missing", "redacted_headers", "sequence_gaps"}
    and name != "pieces"
)

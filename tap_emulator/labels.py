"""Contract: the closed sets the rooms report in, each once; metric label values come from here.

A member added here becomes a label value of its metric at once (observe/metrics.py builds its
label sets from these enums), so a new outcome or reason can never meet a missing series.
"""

from __future__ import annotations

from enum import StrEnum


class Direction(StrEnum):
    """Which side of the proxy a tap sits on; it decides what prefixes a file name."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"


class Source(StrEnum):
    """Which gRPC service a trace came in through."""

    TAP = "tap"  # envoy.service.tap.v3.TapSinkService/StreamTaps
    EXT_PROC = "ext_proc"  # envoy.service.ext_proc.v3.ExternalProcessor/Process


class TraceKind(StrEnum):
    """What a message carried."""

    BUFFERED = "buffered"
    STREAMED_SEGMENT = "streamed_segment"
    SOCKET = "socket"
    OTHER = "other"
    NONE = "none"


FALLBACK_KINDS = (TraceKind.SOCKET, TraceKind.OTHER)
"""The kinds written under a fallback name (socket-trace-..., empty-trace-...)."""


class StreamOutcome(StrEnum):
    """How a stream ended."""

    OK = "ok"
    CANCELLED = "cancelled"  # by the sender or the transport
    INVALID_ARGUMENT = "invalid_argument"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    DATA_LOSS = "data_loss"  # files were dropped (on_write_error: drop)
    INTERNAL = "internal"
    UNFINISHED = "unfinished"  # ext_proc: the stream ended before its transaction's last part
    SHUTDOWN = "shutdown"  # ended by the drain
    IDLE = "idle"  # ended after stream_idle_timeout_seconds without a trace


class RejectReason(StrEnum):
    """Why a message or a stream was refused."""

    DECODE = "decode"
    TOO_LARGE = "too_large"
    TOO_MANY_HEADERS = "too_many_headers"
    IDENTITY_TOO_LONG = "identity_too_long"
    STREAM_LIMIT = "stream_limit"  # no stream slot left, in all
    PEER_LIMIT = "peer_limit"  # the peer holds its share of slots


class WriteErrorReason(StrEnum):
    """Why a file could not be published (from its errno)."""

    ENOSPC = "enospc"
    EDQUOT = "edquot"
    EFBIG = "efbig"
    EIO = "eio"
    EROFS = "erofs"
    EACCES = "eacces"
    ENAMETOOLONG = "enametoolong"
    EMFILE = "emfile"  # out of file descriptors, this process's or the system's
    EISDIR = "eisdir"
    OTHER = "other"


class TransactionDrop(StrEnum):
    """Why a whole ext_proc transaction was not written (that source never waits)."""

    QUEUE_FULL = "queue_full"  # no room in the writers' queue
    ASSEMBLY_FULL = "assembly_full"  # extproc_assembly_max_bytes held by other transactions
    SHUTDOWN = "shutdown"  # the server stopped with no room left to write it


class TransactionOutcome(StrEnum):
    """How a written ext_proc transaction ended."""

    COMPLETE = "complete"  # its response's last message arrived
    INCOMPLETE = "incomplete"  # the stream ended first: aborted, or given up by Envoy


class BodyHalf(StrEnum):
    """Which body of a transaction (a label: which one was cut)."""

    REQUEST = "request"
    RESPONSE = "response"


class ForwardDrop(StrEnum):
    """Why a trace was not forwarded to forward_to (the sources never wait for it)."""

    QUEUE_FULL = "queue_full"  # the forward queue was full while the tool was connected
    DISCONNECTED = "disconnected"  # the forward queue was full while the tool was unreachable
    TOO_LARGE = "too_large"  # over forward_max_message_bytes
    STREAM_LIMIT = "stream_limit"  # a new sender while forward_max_streams streams were open
    SHUTDOWN = "shutdown"  # still queued when the drain ended
    FORWARDER_EXIT = "forwarder_exit"  # held by the forwarding process when it ended unexpectedly


class ForwardState(StrEnum):
    """The state of the connection to forward_to (gRPC's channel connectivity)."""

    IDLE = "idle"
    CONNECTING = "connecting"
    READY = "ready"
    TRANSIENT_FAILURE = "transient_failure"
    SHUTDOWN = "shutdown"

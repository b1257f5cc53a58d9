"""Derive, pure: what a trace is called on disk.

Everything here is a plain function of its arguments: no I/O, no gRPC, no clock. A file name
is `<stem>-<sequence>.pb`, where the stem is `<prefix>-<traceId>` (plain format) or
`<prefix>-<traceId>-<req|res>` (req_res format). The prefix is the request's authority for
inbound taps and the client's namespace for outbound taps.

Safety invariants, relied on by the writer (which publishes relative to a directory fd):
- a stem holds only `[A-Za-z0-9._:-]`, never starts with `.` or `-`, so it can never name a
  parent, a hidden file or another directory;
- every component has a byte budget; an over-long value is cut and tagged with a short hash
  of the whole value, so long values that share a beginning stay apart;
- `stem + "-" + 20-digit sequence + ".pb"` always fits in 255 bytes (NAME_MAX).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from tap_emulator.labels import Direction
from tap_emulator.layout import ALL_SAFE, UNSAFE_CHARACTER

PREFIX_BUDGET = 120
TRACE_ID_BUDGET = 100
_HASH_TAG_CHARS = 8

NO_AUTHORITY = "no-authority"
UNKNOWN_NAMESPACE = "unknown-namespace"
SOCKET_PREFIX = "socket-trace"
EMPTY_PREFIX = "empty-trace"

DEFAULT_TRACE_ID_HEADERS = ("x-b3-traceid", "b3", "traceparent", "x-trace-id", "x-request-id")

_UNSAFE = UNSAFE_CHARACTER
_ALL_SAFE = ALL_SAFE
_HEX_FULL = re.compile(r"[0-9a-f]+").fullmatch
_TAP_ID_TOKENS = re.compile(r"[-._~]")
_HEX = frozenset("0123456789abcdef")
_HEX_OR_DASH = _HEX | {"-"}
_TOKEN_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


class NameFormat(StrEnum):
    """plain: `<prefix>-<traceId>-<seq>.pb`; req_res: `<prefix>-<traceId>-<req|res>-<seq>.pb`."""

    PLAIN = "plain"
    REQ_RES = "req_res"


class Half(StrEnum):
    """The half of an HTTP transaction a file holds, in the req_res format."""

    REQUEST = "req"
    RESPONSE = "res"


class HeaderLike(Protocol):
    """An `envoy.config.core.v3.HeaderValue` or anything shaped like one."""

    @property
    def key(self) -> str: ...

    @property
    def value(self) -> str: ...

    @property
    def raw_value(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Identity:
    """Who sends a tap stream, as far as naming cares; fixed for the whole stream."""

    direction: Direction
    direction_known: bool
    client_namespace: str | None


@dataclass(frozen=True, slots=True)
class Component:
    """A sanitised name component and what sanitising had to do to it."""

    text: str
    sanitized: bool = False
    truncated: bool = False


# --- direction and identity -------------------------------------------------------------


@functools.lru_cache(maxsize=256)  # a proxy's few tap ids, asked once per stream
def direction_from_tap_id(tap_id: str) -> Direction | None:
    """The direction named by the last token of a tap id (`f5-tap-x-inbound`), if any."""
    last = _TAP_ID_TOKENS.split(tap_id)[-1].lower()
    try:
        return Direction(last)
    except ValueError:
        return None


def namespace_from_node(node_id: str, cluster: str, metadata_namespace: str | None) -> str | None:
    """The client namespace: node metadata, else an Istio node id, else `node.cluster`."""
    if metadata_namespace:
        return metadata_namespace
    fields = node_id.split("~")
    if len(fields) == 4 and fields[3]:
        # sidecar~IP~POD.NS~NS.svc.cluster.local: the DNS domain starts with the namespace.
        first_label = fields[3].split(".", 1)[0]
        if first_label:
            return first_label
    if "." in cluster:
        tail = cluster.rsplit(".", 1)[1]
        if tail:
            return tail
    return None


def identity(
    tap_id: str, node_id: str, cluster: str, metadata_namespace: str | None, default: Direction
) -> Identity:
    """Combine what a stream's first message says about its sender."""
    direction = direction_from_tap_id(tap_id)
    return Identity(
        direction=direction or default,
        direction_known=direction is not None,
        client_namespace=namespace_from_node(node_id, cluster, metadata_namespace),
    )


# --- header values ----------------------------------------------------------------------


def header_text(header: HeaderLike) -> str:
    """A header's value, whether the sender used `value` or `raw_value`."""
    if header.value or not header.raw_value:
        return header.value
    return header.raw_value.decode("utf-8", errors="replace")


def authority_from(found: dict[str, str]) -> str | None:
    """`:authority`, else `host`; None when neither is present or both are empty."""
    return found.get(":authority") or found.get("host") or None


# --- trace ids --------------------------------------------------------------------------


def _is_hex(text: str) -> bool:
    return _HEX_FULL(text) is not None


def _b3_trace_id(value: str) -> str | None:
    candidate = value.strip().lower()
    if len(candidate) in (16, 32) and _is_hex(candidate):
        return candidate
    return None


def _b3_single(value: str) -> str | None:
    return _b3_trace_id(value.split("-", 1)[0])


def _traceparent(value: str) -> str | None:
    parts = value.strip().lower().split("-")
    if len(parts) < 4:
        return None
    version, trace_id, parent_id, flags = parts[:4]
    if len(version) != 2 or not _is_hex(version) or version == "ff":
        return None
    if version == "00" and len(parts) != 4:
        return None
    if len(trace_id) != 32 or not _is_hex(trace_id) or trace_id == "0" * 32:
        return None
    if len(parent_id) != 16 or not _is_hex(parent_id) or len(flags) != 2 or not _is_hex(flags):
        return None
    return trace_id


def _token_id(value: str) -> str | None:
    candidate = value.strip()
    if not _TOKEN_ID.fullmatch(candidate):
        return None
    # Hex ids and UUIDs are case-insensitive: one spelling, one file name.
    return candidate.lower() if set(candidate.lower()) <= _HEX_OR_DASH else candidate


_PARSERS = {"x-b3-traceid": _b3_trace_id, "b3": _b3_single, "traceparent": _traceparent}


def parse_trace_id(header: str, value: str) -> str | None:
    """The trace id a header carries if it is well formed for that header, else None."""
    return _PARSERS.get(header, _token_id)(value)


def trace_id_from(found: dict[str, str], sources: Sequence[str], envoy_trace_id: int) -> str:
    """The first well-formed trace id among `sources`, else Envoy's numeric id in hex."""
    for header in sources:
        value = found.get(header)
        if value is not None:
            parsed = parse_trace_id(header, value)
            if parsed is not None:
                return parsed
    return format(envoy_trace_id, "x")


# --- safe components and stems ----------------------------------------------------------


def _hash_tag(raw: str) -> str:
    digest = hashlib.sha256(raw.encode("utf-8", errors="surrogatepass")).hexdigest()
    return digest[:_HASH_TAG_CHARS]


def safe_component(raw: str, budget: int) -> Component:
    """`raw` with unsafe characters replaced by `_`, cut to `budget` bytes with a hash tag."""
    if len(raw) <= budget and _ALL_SAFE(raw) is not None:
        return Component(raw)  # the common case: nothing to do
    text = _UNSAFE.sub("_", raw)
    sanitized = text != raw
    if len(text) <= budget:
        return Component(text, sanitized=sanitized)
    cut = text[: budget - _HASH_TAG_CHARS - 1]
    return Component(f"{cut}_{_hash_tag(raw)}", sanitized=sanitized, truncated=True)


@functools.lru_cache(maxsize=4096)  # authorities and namespaces repeat; ids do not come here
def prefix_component(raw: str) -> Component:
    """A name's leading component: safe, and never starting with `.` or `-`."""
    component = safe_component(raw, PREFIX_BUDGET - 1)
    if component.text.startswith((".", "-")):
        return Component("_" + component.text, sanitized=True, truncated=component.truncated)
    return component


def ascii_lower(text: str) -> str:
    """Lowercase A-Z only: `str.lower()` would fold the Kelvin sign into `k` (design.md, Names)."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True, slots=True)
class Stem:
    """The part of a file name before `-<sequence>.pb`, with what building it had to fix."""

    text: str
    sanitized: bool
    truncated: bool


def build_stem(prefix: str, trace_id: str, half: Half | None) -> Stem:
    """Join prefix, trace id and (req_res format) half into one safe stem."""
    head = prefix_component(prefix)
    trace = safe_component(trace_id, TRACE_ID_BUDGET)
    parts = [head.text, trace.text]
    if half is not None:
        parts.append(half.value)
    return Stem(
        text="-".join(parts),
        sanitized=head.sanitized or trace.sanitized,
        truncated=head.truncated or trace.truncated,
    )


def prefix_for(direction: Direction, authority: str | None, namespace: str | None) -> str:
    """Authority for inbound taps, client namespace for outbound, placeholders when unknown."""
    if direction is Direction.INBOUND:
        return ascii_lower(authority) if authority else NO_AUTHORITY
    return namespace or UNKNOWN_NAMESPACE

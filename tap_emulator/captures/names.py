"""What a trace file's name says: the emulator's `<stem>-<seq>.pb` (its prefix, trace id and
req/res half) or anything else (Envoy's `<path_prefix>_<id>.<ext>`, or a name we do not know).

The emulator's stem is `<prefix>-<traceId>` or `<prefix>-<traceId>-<req|res>`, and both the
prefix (an authority) and the trace id (a UUID) may hold dashes, so the split is exact only
when the request headers are known (`split_stem` is then given the trace id they name);
without them it is a guess by the id's shape, and says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tap_emulator.derive.naming import (
    NO_AUTHORITY,
    Half,
    ascii_lower,
    prefix_component,
    safe_component,
)
from tap_emulator.derive.naming import TRACE_ID_BUDGET as _TRACE_ID_BUDGET
from tap_emulator.layout import OUR_FILE

_HALF_SUFFIXES = {"-" + Half.REQUEST.value: Half.REQUEST, "-" + Half.RESPONSE.value: Half.RESPONSE}
# Shapes of trace ids, most specific first: UUID (x-request-id), 32 or 16 hex digits (b3,
# W3C), then one dash-free token.
_ID_SHAPES = (
    re.compile(r"-(?P<id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$"),
    re.compile(r"-(?P<id>[0-9a-f]{32}|[0-9a-f]{16})$"),
    re.compile(r"-(?P<id>[^-]+)$"),
)
# A Kubernetes namespace is a DNS label; an authority that is not one cannot be a namespace.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class EmulatorName:
    """An emulator file name taken apart: `<base>[-<half>]-<sequence>.pb`."""

    stem: str  # everything before `-<sequence>.pb`
    base: str  # the stem without its half: `<prefix>-<traceId>`
    half: Half | None
    sequence: int


@dataclass(frozen=True, slots=True)
class StemParts:
    """A base stem split into prefix and trace id; `exact` when headers confirmed the split."""

    prefix: str | None
    trace_id: str | None
    exact: bool


def parse_emulator_name(name: str) -> EmulatorName | None:
    """The parts of an emulator file name, or None if `name` is not shaped like one."""
    match = OUR_FILE.fullmatch(name)
    if match is None:
        return None
    stem = match["stem"]
    base, half = stem, None
    for suffix, which in _HALF_SUFFIXES.items():
        if stem.endswith(suffix) and len(stem) > len(suffix):
            base, half = stem[: -len(suffix)], which
            break
    return EmulatorName(stem=stem, base=base, half=half, sequence=int(match["sequence"]))


def split_stem(base: str, header_trace_id: str | None) -> StemParts:
    """Prefix and trace id of a base stem; exact when `header_trace_id` (what the request
    headers name) is where the stem ends."""
    if header_trace_id:
        tail = "-" + safe_component(header_trace_id, _TRACE_ID_BUDGET).text
        if base.endswith(tail) and len(base) > len(tail):
            return StemParts(base[: -len(tail)], tail[1:], exact=True)
    for shape in _ID_SHAPES:
        match = shape.search(base)
        if match is not None and match.start() > 0:
            return StemParts(base[: match.start()], match["id"], exact=False)
    return StemParts(None, None, exact=False)


def authority_prefix(authority: str | None) -> str:
    """The prefix the emulator gives an inbound trace with this authority."""
    return prefix_component(ascii_lower(authority) if authority else NO_AUTHORITY).text


def direction_from_prefix(prefix: str | None, authority: str | None) -> str:
    """`inbound`, `outbound` or `unknown`: what the name's prefix proves, and no more.

    An inbound prefix is always the request's authority, so a prefix that differs from it
    is a client namespace (outbound). A prefix equal to it is inbound only if it could not
    also be a namespace name (a DNS label, like `default` or `httpbin`).
    """
    if prefix is None or authority is None:
        return "unknown"
    if prefix != authority_prefix(authority):
        return "outbound"
    if _DNS_LABEL.fullmatch(prefix) is None:
        return "inbound"
    return "unknown"

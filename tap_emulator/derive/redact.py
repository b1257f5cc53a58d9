"""Derive: replace the values of sensitive headers before a trace reaches the disk.

The header stays (so a reader sees that it was sent), only its value is replaced. Both
`value` and `raw_value` are covered: Envoy fills `value`, but any client of our port can set
either.
"""

from __future__ import annotations

from collections.abc import Iterable

from tap_emulator._proto.envoy.config.core.v3.base_pb2 import HeaderValue
from tap_emulator.derive.naming import header_text

REDACTED = "REDACTED"
_REDACTED_BYTES = REDACTED.encode()
DEFAULT_REDACT_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie")


def _redact(header: HeaderValue) -> int:
    replaced = 0
    if header.value:
        header.value = REDACTED
        replaced += 1
    if header.raw_value:
        header.raw_value = _REDACTED_BYTES
        replaced += 1
    return replaced


def redact_headers(headers: Iterable[HeaderValue], names: frozenset[str]) -> int:
    """Redact the matching headers in place; returns how many values were replaced."""
    if not names:
        return 0
    replaced = 0
    for header in headers:
        if header.key.lower() in names:
            replaced += _redact(header)
    return replaced


def find_and_redact(
    headers: Iterable[HeaderValue], wanted: frozenset[str], names: frozenset[str]
) -> tuple[dict[str, str], int]:
    """One pass over request headers: the first value of each wanted header (as sent,
    before redaction), and the redaction of the sensitive ones."""
    found: dict[str, str] = {}
    replaced = 0
    for header in headers:
        key = header.key.lower()
        if key in wanted and key not in found:
            found[key] = header_text(header)
        if key in names:
            replaced += _redact(header)
    return found, replaced

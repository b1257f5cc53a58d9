"""What the page's table shows of a transaction (one JSON row), and the filters the page and
its downloads share: authority and path (a part of the value, or a glob of the whole value
when the text has a `*`: a `?` alone is too common in paths to mean one), status (`5xx`,
`404`, `2xx,304`, `none`), trace id (a part of any id the transaction is known by) and
direction. `static/app.js` applies the same rules to the rows it holds; the tests hold both
to the same cases."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tap_emulator.captures.model import Transaction
from tap_emulator.captures.select import Selection, parse_statuses

DIRECTIONS = frozenset({"inbound", "outbound", "unknown"})
MAX_FILTER_CHARACTERS = 500


def trace_ids(transaction: Transaction) -> list[str]:
    """The ids a person may search by: the headers' trace id, the file name's, Envoy's own
    (hex and decimal); lowercase, each once."""
    found = [transaction.trace_id, transaction.name_trace_id]
    if transaction.envoy_trace_id is not None:
        found += [format(transaction.envoy_trace_id, "x"), str(transaction.envoy_trace_id)]
    return list(dict.fromkeys(value.lower() for value in found if value))


def row(number: int, transaction: Transaction) -> dict[str, Any]:
    """The table's row of a transaction; `id` is the index's number for it."""
    return {
        "id": number,
        "time": transaction.time,
        "timeSource": transaction.time_source,
        "direction": transaction.direction,
        "method": transaction.method,
        "authority": transaction.authority,
        "path": transaction.path,
        "status": transaction.status,
        "grpcStatus": transaction.grpc_status,
        "duration": transaction.duration_seconds,
        "requestBytes": transaction.request_body_bytes,
        "responseBytes": transaction.response_body_bytes,
        "requestTruncated": transaction.request_truncated,
        "responseTruncated": transaction.response_truncated,
        "trace": transaction.trace_id or transaction.name_trace_id,
        "traceIds": trace_ids(transaction),
        "final": transaction.final,
        "missing": [str(item) for item in transaction.missing],
        "redacted": list(transaction.redacted_headers),
        "evicted": transaction.evicted,
        "files": len(transaction.files),
    }


def row_json(number: int, transaction: Transaction) -> str:
    return json.dumps(row(number, transaction), ensure_ascii=False, separators=(",", ":"))


def text_matches(value: str | None, wanted: str) -> bool:
    """Case-insensitive: `wanted` as a glob (fnmatch) if it has a `*`, else as a part."""
    text = (value or "").lower()
    wanted = wanted.lower()
    if "*" in wanted:
        return fnmatch.fnmatchcase(text, wanted)
    return wanted in text


@dataclass(frozen=True, slots=True)
class RowFilter:
    """A filter over transactions; empty fields select everything."""

    authority: str = ""
    path: str = ""
    statuses: tuple[str, ...] = field(default=())
    trace: str = ""
    direction: str = ""

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> RowFilter:
        """From the page's query string; raises ValueError naming a bad value."""
        values = {name: query.get(name, "").strip() for name in _QUERY_NAMES}
        for name, value in values.items():
            if len(value) > MAX_FILTER_CHARACTERS:
                raise ValueError(f"{name}: at most {MAX_FILTER_CHARACTERS} characters")
        direction = values["direction"].lower()
        if direction and direction not in DIRECTIONS:
            allowed = ", ".join(sorted(DIRECTIONS))
            raise ValueError(f"direction: one of {allowed}, not {direction!r}")
        status = values["status"]
        return cls(
            authority=values["authority"],
            path=values["path"],
            statuses=parse_statuses(status) if status else (),
            trace=values["trace"].lower(),
            direction=direction,
        )

    def matches(self, transaction: Transaction) -> bool:
        if self.direction and transaction.direction != self.direction:
            return False
        if self.authority and not text_matches(transaction.authority, self.authority):
            return False
        if self.path and not text_matches(transaction.path, self.path):
            return False
        if self.trace and not any(self.trace in known for known in trace_ids(transaction)):
            return False
        return not self.statuses or Selection(statuses=self.statuses).matches(transaction)


_QUERY_NAMES = ("authority", "path", "status", "trace", "direction")

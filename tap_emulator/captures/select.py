"""Which transactions a person asked for: by authority (a glob), trace id (any id it is known
by), HTTP status (`5xx`, `404`, `2xx,304`, `none` for no response) and time (`--since`: an
ISO 8601 time or a span back from now, `90s`, `15m`, `2h`, `7d`)."""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
import time
from dataclasses import dataclass, field

from tap_emulator.captures.model import Transaction

_SPAN = re.compile(r"(?P<count>[0-9]+(?:\.[0-9]+)?)(?P<unit>[smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_STATUS_CLASS = re.compile(r"[1-5]xx")
_STATUS_CODE = re.compile(r"[0-9]{3}")


def parse_statuses(text: str) -> tuple[str, ...]:
    """`5xx,404,none` -> its parts, each checked; raises ValueError naming a bad one."""
    parts = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    for part in parts:
        if not (_STATUS_CLASS.fullmatch(part) or _STATUS_CODE.fullmatch(part) or part == "none"):
            raise ValueError(f"--status {part!r}: expected a code (404), a class (5xx) or none")
    if not parts:
        raise ValueError("--status: give at least one code or class")
    return parts


def parse_since(text: str, now_seconds: float | None = None) -> float:
    """Epoch seconds of `text`: ISO 8601 (a time without zone is UTC) or a span back."""
    span = _SPAN.fullmatch(text.strip())
    if span is not None:
        now = time.time() if now_seconds is None else now_seconds
        return now - float(span["count"]) * _UNIT_SECONDS[span["unit"]]
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(
            f"--since {text!r}: expected an ISO 8601 time (2026-11-24T16:51:00Z) "
            "or a span back from now (90s, 15m, 2h, 7d)"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def _status_matches(status: int | None, wanted: tuple[str, ...]) -> bool:
    for part in wanted:
        if part == "none":
            if status is None:
                return True
        elif status is not None:
            if part.endswith("xx") and status // 100 == int(part[0]):
                return True
            if part == str(status):
                return True
    return False


@dataclass(frozen=True, slots=True)
class Selection:
    """A filter over transactions; empty fields select everything."""

    authority: str | None = None
    trace: str | None = None
    statuses: tuple[str, ...] = field(default=())
    since_seconds: float | None = None

    def matches(self, transaction: Transaction) -> bool:
        if self.authority is not None:
            authority = (transaction.authority or "").lower()
            if not fnmatch.fnmatchcase(authority, self.authority.lower()):
                return False
        if self.trace is not None and self.trace.lower() not in transaction.trace_ids():
            return False
        if self.statuses and not _status_matches(transaction.status, self.statuses):
            return False
        return not (
            self.since_seconds is not None
            and (transaction.time is None or transaction.time < self.since_seconds)
        )

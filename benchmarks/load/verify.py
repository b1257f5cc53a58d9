"""Check an output directory against what the load generators sent: every message one file.

A file ``<prefix>-<traceid>-<n>.pb`` is *valid* when its trace id decodes to a stream and
transaction of this run, segment ``n`` exists in that transaction's template and was sent
(its position in the stream is below the stream's sent count), the prefix is the one the
emulator must use, and the size is the template's expected file size (the redacted trace
where a secret header was sent). Anything else is counted as unexpected, with examples.

``lost`` counts, over streams answered OK (acknowledged: the server only answers OK once
every file of the stream is on disk), messages sent minus valid files. Streams that ended
otherwise are reported as ``unacknowledged`` with their missing files, not as losses.

With the load generators' scheduled send times it also returns per-file latencies: the
file's ctime (set by the final ``link``; the kernel's coarse clock, one tick is 4 ms here)
minus the message's scheduled send time.
"""

from __future__ import annotations

import array
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from load import payloads

TEMP_PREFIX = ".tap-emulator-tmp-"


@dataclass(slots=True)
class Verification:
    files: int = 0
    valid: int = 0
    unexpected: int = 0
    wrong_size: int = 0
    temporaries: int = 0
    sent: int = 0
    acknowledged: int = 0
    lost: int = 0
    unacknowledged_missing: int = 0
    streams_ok: int = 0
    streams_not_ok: int = 0
    bytes_on_disk: int = 0
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify(
    directory: Path,
    catalog: payloads.Catalog,
    tag: int,
    streams: list[dict[str, Any]],
    scheduled: dict[int, array.array[int]] | None = None,
    window_ns: tuple[int, int] | None = None,
) -> tuple[Verification, list[float]]:
    """Compare ``directory`` with what ``streams`` (the generators' reports) sent."""
    result = Verification()
    sent = {int(s["stream"]): int(s["sent"]) for s in streams}
    ok = {int(s["stream"]) for s in streams if s["code"] == "OK"}
    valid_per_stream = dict.fromkeys(sent, 0)
    latencies_ms: list[float] = []

    def bad(name: str, why: str) -> None:
        result.unexpected += 1
        if len(result.examples) < 10:
            result.examples.append(f"{why}: {name}")

    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(TEMP_PREFIX):
                result.temporaries += 1
                continue
            result.files += 1
            if not name.endswith(".pb"):
                bad(name, "not .pb")
                continue
            parts = name[:-3].rsplit("-", 2)
            if len(parts) != 3 or not parts[2].isdigit():
                bad(name, "unparsable")
                continue
            prefix, tid, seq_text = parts
            decoded = payloads.parse_trace_id(tid)
            if decoded is None or decoded[0] != tag or decoded[1] not in sent:
                bad(name, "unknown trace id")
                continue
            _, stream, k = decoded
            transaction = catalog.template(stream, k)
            segment = int(seq_text) - 1
            if not 0 <= segment < len(transaction.messages):
                bad(name, "sequence beyond the transaction (duplicate?)")
                continue
            index = catalog.message_index(stream, k, segment)
            if index >= sent[stream]:
                bad(name, "never sent")
                continue
            if prefix != payloads.expected_prefix(stream, transaction):
                bad(name, "wrong prefix")
                continue
            stat = entry.stat(follow_symlinks=False)
            result.bytes_on_disk += stat.st_size
            if stat.st_size != transaction.messages[segment].file_size:
                result.wrong_size += 1
                bad(name, f"size {stat.st_size} != {transaction.messages[segment].file_size}")
                continue
            result.valid += 1
            valid_per_stream[stream] += 1
            if scheduled is not None:
                times = scheduled.get(stream)
                if times is not None and index < len(times):
                    due = times[index]
                    if window_ns is None or window_ns[0] <= due < window_ns[1]:
                        latencies_ms.append((stat.st_ctime_ns - due) / 1e6)
    for stream, count in sent.items():
        result.sent += count
        missing = count - valid_per_stream[stream]
        if stream in ok:
            result.streams_ok += 1
            result.acknowledged += count
            result.lost += max(0, missing)
        else:
            result.streams_not_ok += 1
            result.unacknowledged_missing += max(0, missing)
    return result, latencies_ms

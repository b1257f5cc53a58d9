"""A client that tries to hold every stream slot: many connections, many StreamTaps streams
each kept alive by the smallest message, and Health/Watch calls that never send their request.

Run as a subprocess (its own interpreter, so its work never slows the test's own probes):

stdin: JSON {"target": "HOST:PORT", "source_host": "127.0.0.1", "tap_connections": N,
"taps_per_connection": M, "keepalive_seconds": S, "watch_connections": W,
"watches_per_connection": V, "report_file": PATH, "stop_file": PATH, "max_seconds": T}.
It opens everything, reads for a second, writes `report_file` (so the test knows the server
has answered what it refuses), keeps every tap stream alive with a 5-byte message every S
seconds until `stop_file` exists (or T seconds pass), and prints the final report: how many
streams of each kind are still open, and how many ended with each gRPC status (and one
status message per code).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from h2_raw import RawH2, grpc_frame

WATCH_PATH = "/grpc.health.v1.Health/Watch"
KEEPALIVE = grpc_frame(b"")  # a StreamTapsRequest with nothing in it


def _report(connections: dict[str, list[tuple[RawH2, list[int]]]]) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for kind, held in connections.items():
        codes: dict[str, int] = {}
        messages: dict[str, str] = {}
        open_streams = 0
        for connection, streams in held:
            for stream_id in streams:
                outcome = connection.streams[stream_id]
                if not outcome.finished and not connection.connection.closed:
                    open_streams += 1
                    continue
                code = str(outcome.grpc_status) if outcome.grpc_status is not None else "reset"
                codes[code] = codes.get(code, 0) + 1
                messages.setdefault(code, outcome.grpc_message)
        report[kind] = {"open": open_streams, "ended": codes, "messages": messages}
    return report


def _pump_all(connections: dict[str, list[tuple[RawH2, list[int]]]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for held in connections.values():
            for connection, _ in held:
                connection.pump(0)
        time.sleep(0.02)


def main() -> None:
    spec = json.load(sys.stdin)
    target, source = spec["target"], spec.get("source_host")
    connections: dict[str, list[tuple[RawH2, list[int]]]] = {"taps": [], "watches": []}
    for _ in range(spec.get("tap_connections", 0)):
        connection = RawH2(target, timeout=10, source_host=source)
        streams = []
        for _ in range(spec["taps_per_connection"]):
            stream_id = connection.open_call()
            connection.send_data(stream_id, KEEPALIVE)
            streams.append(stream_id)
        connections["taps"].append((connection, streams))
    for _ in range(spec.get("watch_connections", 0)):
        connection = RawH2(target, timeout=10, source_host=source)
        streams = [connection.open_call(WATCH_PATH) for _ in range(spec["watches_per_connection"])]
        connections["watches"].append((connection, streams))
    _pump_all(connections, 1.0)
    Path(spec["report_file"]).write_text(json.dumps(_report(connections)))

    stop = Path(spec["stop_file"])
    keepalive = spec.get("keepalive_seconds", 8.0)
    ends = time.monotonic() + spec.get("max_seconds", 60)
    next_keepalive = time.monotonic() + keepalive
    while not stop.exists() and time.monotonic() < ends:
        if time.monotonic() >= next_keepalive:
            next_keepalive += keepalive
            for connection, streams in connections["taps"]:
                for stream_id in streams:
                    if not connection.streams[stream_id].finished:
                        connection.send_data(stream_id, KEEPALIVE, within=0.1)
        _pump_all(connections, 0.1)
    json.dump(_report(connections), sys.stdout)
    for held in connections.values():
        for connection, _ in held:
            connection.close()


if __name__ == "__main__":
    main()

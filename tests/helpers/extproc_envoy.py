"""The pieces of the ext_proc end-to-end tests around the chart's filter: the recorded backends
as a process, the touches a test adds to a chart bootstrap beside the rendered filter (a route
rewrite, one file-tap directory per listener), waiting until an emulator has written all it
accepted, and captures (one buffered trace, or streamed segments) read back as one transaction.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tap_emulator._proto.envoy.data.tap.v3.http_pb2 import (
    HttpBufferedTrace,
    HttpStreamedTraceSegment,
)
from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
from tests.helpers.backends import Headers, Seen, progress_from_report
from tests.helpers.emulator import EmulatorProcess, metric, scrape, wait_for
from tests.helpers.harness import BACKENDS, LoggedProcess, Processes

Obj = dict[str, Any]

TAP_FILTER = "envoy.filters.http.tap"


# --- the recorded backends ---------------------------------------------------------------


class RecordedBackends:
    """tests/helpers/backends.py as a child process, and what its recorded routes received."""

    def __init__(self, processes: Processes) -> None:
        self.process: LoggedProcess = processes.start(
            "backends", [sys.executable, str(BACKENDS)], stdout_lines=True
        )
        self.ports: dict[str, int] = json.loads(
            self.process.wait_for_line(r"^\{.*\}$", timeout=20).group(0)
        )

    def seen(self, case: str) -> Seen | None:
        """What the upstream received for the request that carried `case`, once it ended."""
        for line in list(self.process.lines):
            seen = Seen.from_report(line)
            if seen is not None and seen.case == case:
                return seen
        return None

    def wait_seen(self, case: str, timeout_seconds: float = 20.0) -> Seen:
        assert wait_for(lambda: self.seen(case) is not None, timeout_seconds), (
            f"the upstream never reported {case!r}:\n{self.process.log[-3000:]}"
        )
        seen = self.seen(case)
        assert seen is not None
        return seen

    def wait_forwarded(self, case: str, body_bytes: int, timeout_seconds: float = 20.0) -> None:
        """Wait until the upstream has read `body_bytes` of the upload that carried `case`."""

        def arrived() -> bool:
            for line in list(self.process.lines):
                progress = progress_from_report(line)
                if progress is not None and progress[0] == case and progress[1] >= body_bytes:
                    return True
            return False

        assert wait_for(arrived, timeout_seconds), f"the upstream never got {body_bytes} bytes"


# --- touches beside the rendered filter ------------------------------------------------------


def _connection_managers(bootstrap: Obj) -> dict[str, Obj]:
    return {
        listener["name"]: listener["filter_chains"][0]["filters"][0]["typed_config"]
        for listener in bootstrap["static_resources"]["listeners"]
    }


def http_filter_names(bootstrap: Obj) -> dict[str, list[str]]:
    """Each listener's HTTP filters, in order."""
    return {
        name: [f["name"] for f in manager["http_filters"]]
        for name, manager in _connection_managers(bootstrap).items()
    }


def rewrite_prefix(bootstrap: Obj, prefix: str, replacement: str) -> None:
    """Routes matching `prefix` forward the path with `prefix` replaced (Envoy's router
    `prefix_rewrite`), on every listener."""
    found = 0
    for manager in _connection_managers(bootstrap).values():
        for host in manager["route_config"]["virtual_hosts"]:
            for route in host["routes"]:
                if route["match"].get("prefix") == prefix:
                    route["route"]["prefix_rewrite"] = replacement
                    found += 1
    assert found, f"no route matches prefix {prefix}"


def tap_per_listener(bootstrap: Obj, directory: Path) -> dict[str, Path]:
    """Point each listener's file tap at a directory of its own (`directory/<listener>`)."""
    directories = {}
    for name, manager in _connection_managers(bootstrap).items():
        (tap,) = [f for f in manager["http_filters"] if f["name"] == TAP_FILTER]
        own = directory / name
        own.mkdir(parents=True, exist_ok=True)
        sinks = tap["typed_config"]["common_config"]["static_config"]["output_config"]["sinks"]
        (sink,) = sinks
        sink["file_per_tap"]["path_prefix"] = str(own / "tap")
        directories[name] = own
    return directories


# --- the emulator's side -----------------------------------------------------------------


def start_emulator(stack: contextlib.ExitStack, output_dir: Path) -> EmulatorProcess:
    """`tap-emulator serve` on loopback (ports chosen by the kernel) writing to `output_dir`;
    stopped with SIGTERM (SIGKILL if it hangs) when `stack` closes."""
    emulator = EmulatorProcess(output_dir, []).start()

    def stop() -> None:
        try:
            emulator.stop(timeout=10)
        except subprocess.TimeoutExpired:
            emulator.kill()

    stack.callback(stop)
    return emulator


def written_everything(metrics_url: str, transactions: int) -> bool:
    """Whether `transactions` ext_proc transactions were handed on (or dropped), and every
    trace accepted is published (or given up) with nothing left in the queue."""
    samples = scrape(metrics_url)
    handed = metric(samples, "tap_emulator_extproc_transactions_total")
    dropped = metric(samples, "tap_emulator_extproc_transactions_dropped_total")
    accepted = metric(samples, "tap_emulator_messages_received_total", source="ext_proc")
    published = metric(samples, "tap_emulator_files_written_total")
    given_up = metric(samples, "tap_emulator_files_dropped_total")
    queued = metric(samples, "tap_emulator_queue_items")
    return handed + dropped >= transactions and published + given_up >= accepted and not queued


def pb_files(directory: Path) -> dict[str, bytes]:
    """The published .pb files of a directory, by name."""
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.name.endswith(".pb")}


_NUMBERED = re.compile(r"^(?P<stem>.+)-(?P<seq>[0-9]+)\.pb$")


def stems(files: dict[str, bytes]) -> set[str]:
    """The `<prefix>-<traceId>` of every `<prefix>-<traceId>-<seq>.pb`."""
    return {m["stem"] for name in files if (m := _NUMBERED.match(name))}


def numbered(files: dict[str, bytes], stem: str) -> list[str]:
    """The names under `stem` in sequence order; asserts they run 1, 2, 3... with no gap."""
    found = {
        int(m["seq"]): name for name in files if (m := _NUMBERED.match(name)) and m["stem"] == stem
    }
    assert sorted(found) == list(range(1, len(found) + 1)), (stem, sorted(found))
    return [found[n] for n in sorted(found)]


# --- a capture read back as one transaction -----------------------------------------------

_STREAMED_ORDER = re.compile(
    r"(request_headers( request_body_chunk)*( request_trailers)? ?)?"
    r"(response_headers( response_body_chunk)*( response_trailers)?)?"
)


def pairs(headers: Any) -> Headers:
    """HeaderValues as (key, value) text pairs; every value must have been written as text."""
    shown = []
    for header in headers:
        assert not header.raw_value, (header.key, header.raw_value)
        shown.append((header.key, header.value))
    return shown


@dataclass
class Transaction:
    """One HTTP transaction as a capture holds it. Headers are None when that part is absent."""

    request_headers: Headers | None = None
    request_body: bytes = b""
    request_truncated: bool = False
    request_trailers: Headers = field(default_factory=list)
    response_headers: Headers | None = None
    response_body: bytes = b""
    response_truncated: bool = False
    response_trailers: Headers = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)  # streamed: the segments' parts, in order


def from_buffered(trace: HttpBufferedTrace) -> Transaction:
    request, response = trace.request, trace.response
    return Transaction(
        request_headers=pairs(request.headers) if request.headers else None,
        request_body=request.body.as_bytes,
        request_truncated=request.body.truncated,
        request_trailers=pairs(request.trailers),
        response_headers=pairs(response.headers) if response.headers else None,
        response_body=response.body.as_bytes,
        response_truncated=response.body.truncated,
        response_trailers=pairs(response.trailers),
    )


def from_segments(segments: list[HttpStreamedTraceSegment]) -> Transaction:
    """The transaction the segments reassemble into; asserts one trace id and Envoy's order."""
    assert len({s.trace_id for s in segments}) == 1, [s.trace_id for s in segments]
    transaction = Transaction()
    for segment in segments:
        piece = str(segment.WhichOneof("message_piece"))
        transaction.pieces.append(piece)
        if piece == "request_headers":
            transaction.request_headers = pairs(segment.request_headers.headers)
        elif piece == "request_body_chunk":
            transaction.request_body += segment.request_body_chunk.as_bytes
            transaction.request_truncated |= segment.request_body_chunk.truncated
        elif piece == "request_trailers":
            transaction.request_trailers = pairs(segment.request_trailers.headers)
        elif piece == "response_headers":
            transaction.response_headers = pairs(segment.response_headers.headers)
        elif piece == "response_body_chunk":
            transaction.response_body += segment.response_body_chunk.as_bytes
            transaction.response_truncated |= segment.response_body_chunk.truncated
        elif piece == "response_trailers":
            transaction.response_trailers = pairs(segment.response_trailers.headers)
        else:
            raise AssertionError(f"a segment with no part: {segment}")
    assert _STREAMED_ORDER.fullmatch(" ".join(transaction.pieces)), transaction.pieces
    return transaction


def read_capture(files: dict[str, bytes], stem: str) -> Transaction:
    """The transaction written under `stem`: one buffered trace, or streamed segments."""
    names = numbered(files, stem)
    assert names, f"nothing written under {stem}"
    wrappers = [TraceWrapper.FromString(files[name]) for name in names]
    kinds = {wrapper.WhichOneof("trace") for wrapper in wrappers}
    if kinds == {"http_buffered_trace"}:
        assert len(wrappers) == 1, f"{len(wrappers)} buffered traces under {stem}"
        return from_buffered(wrappers[0].http_buffered_trace)
    assert kinds == {"http_streamed_trace_segment"}, kinds
    return from_segments([wrapper.http_streamed_trace_segment for wrapper in wrappers])

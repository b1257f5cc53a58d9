"""An HTTP/1.1 backend for fault tests: small answers at a steady rate and large downloads at
loopback speed. Run as a process, it serves on 127.0.0.1 port 0, prints `{"port": PORT}` and
serves until SIGTERM or SIGINT.

- `GET /bytes/<n>` answers `n` bytes (content-length), written 1 MiB at a time;
- any other `GET` answers 64 bytes.

A process of its own, so that the test's clients and this server never share a GIL: a
latency measured through Envoy is then Envoy's and the network's, not the test process's.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOOPBACK = "127.0.0.1"
SMALL_BODY = b"x" * 64
_CHUNK = memoryview(b"\x5a" * (1024 * 1024))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bulk"
    sys_version = ""
    # Headers and a small body go out as two writes: without TCP_NODELAY the second waits
    # for the peer's delayed ACK (40 ms), which would swamp every latency measured.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        size = _requested_size(self.path)
        self.send_response(200)
        self.send_header("content-type", "application/octet-stream")
        self.send_header("content-length", str(size if size is not None else len(SMALL_BODY)))
        self.end_headers()
        if size is None:
            self.wfile.write(SMALL_BODY)
            return
        left = size
        while left > 0:
            piece = _CHUNK[: min(left, len(_CHUNK))]
            self.wfile.write(piece)
            left -= len(piece)


def _requested_size(path: str) -> int | None:
    if not path.startswith("/bytes/"):
        return None
    try:
        return max(0, int(path.removeprefix("/bytes/")))
    except ValueError:
        return None


def serve() -> None:
    server = ThreadingHTTPServer((LOOPBACK, 0), _Handler)
    server.daemon_threads = True
    print(json.dumps({"port": server.server_address[1]}), flush=True)

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()


if __name__ == "__main__":
    serve()
    sys.exit(0)

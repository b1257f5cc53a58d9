"""Runs `tap-emulator serve` with deliberately slow writers, for backpressure and drain tests.

    python slow_server.py --write-delay-seconds 0.01 [--gate FILE] -- serve ARGS...

Each published file costs an extra `--write-delay-seconds`. With `--gate FILE`, writers
publish nothing until FILE exists (a stalled disk that recovers).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tap_emulator.cli import main
from tap_emulator.write import pool as writer


def slow_down(delay: float, gate: Path | None) -> None:
    publish = writer.WriterPool._publish

    def slow_publish(self: writer.WriterPool, publication: writer.Publication) -> int:
        while gate is not None and not gate.exists():
            time.sleep(0.01)
        time.sleep(delay)
        return publish(self, publication)

    writer.WriterPool._publish = slow_publish  # type: ignore[method-assign]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--write-delay-seconds", type=float, default=0.0)
    parser.add_argument("--gate", type=Path)
    own, rest = parser.parse_known_args()
    slow_down(own.write_delay_seconds, own.gate)
    # Slow publishing must stay off the event loop (as it would on a real slow disk).
    sys.exit(main([*(arg for arg in rest if arg != "--"), "--writer-mode", "thread"]))

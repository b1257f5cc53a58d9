"""Runs `tap-emulator serve` over a deliberately slow disk, for backpressure and drain tests.

    python slow_server.py --write-delay-seconds 0.01 [--gate FILE] -- serve ARGS...

Each published file costs an extra `--write-delay-seconds`. With `--gate FILE`, writers
publish nothing until FILE exists (a stalled disk that recovers). The delay sits in a
publisher wrapped around the real one (tap_emulator.testing), so everything else is `serve`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tap_emulator import app
from tap_emulator.cli import build_parser, settings_from
from tap_emulator.observe.logs import configure_logging
from tap_emulator.testing import SlowPublisher
from tap_emulator.write.directory import DirectoryPublisher

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--write-delay-seconds", type=float, default=0.0)
    parser.add_argument("--gate", type=Path)
    own, rest = parser.parse_known_args()
    settings = settings_from(build_parser().parse_args([a for a in rest if a != "--"]))
    configure_logging(settings.log_level, settings.log_format)
    disk = DirectoryPublisher(
        settings.output_dir, file_mode=settings.file_mode, fsync=settings.fsync
    )
    sys.exit(app.run(settings, SlowPublisher(disk, own.write_delay_seconds, own.gate)))

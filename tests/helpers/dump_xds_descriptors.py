"""Writes the FileDescriptorSet of xds-protos' tap and ext_proc services (and everything they
import) to stdout, so tests can compare it with ours as data, in a process that never loads
our code."""

from __future__ import annotations

import sys

from descriptor_set import reachable_files  # a sibling: this file runs as a script
from envoy.service.ext_proc.v3 import external_processor_pb2
from envoy.service.tap.v3 import tap_pb2


def main() -> None:
    roots = [tap_pb2.DESCRIPTOR, external_processor_pb2.DESCRIPTOR]
    sys.stdout.buffer.write(reachable_files(roots).SerializeToString())


if __name__ == "__main__":
    main()

"""Writes the FileDescriptorSet of xds-protos' tap service (and everything it imports) to
stdout, so tests can compare it with ours as data, in a process that never loads our code."""

from __future__ import annotations

import sys

from envoy.service.tap.v3 import tap_pb2
from google.protobuf import descriptor_pb2


def main() -> None:
    found = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()
    pending = [tap_pb2.DESCRIPTOR]
    while pending:
        file = pending.pop()
        if file.name in seen:
            continue
        seen.add(file.name)
        file.CopyToProto(found.file.add())
        pending.extend(file.dependencies)
    sys.stdout.buffer.write(found.SerializeToString())


if __name__ == "__main__":
    main()

"""The proto files a set of generated modules reach, as plain FileDescriptorProtos, so the
wire conformance test can compare two implementations of the same API as data.

Used on both sides: in the test process for our `tap_emulator._proto` and in a subprocess for
xds-protos (the two must never share a process). It imports neither.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import descriptor, descriptor_pb2


def _fill_json_names(proto: descriptor_pb2.DescriptorProto, live: descriptor.Descriptor) -> None:
    # protoc leaves json_name out of the descriptors it embeds; the live descriptor computes
    # it (or carries an explicit json_name option), so it is the one to compare.
    for field in proto.field:
        field.json_name = live.fields_by_name[field.name].json_name
    for nested in proto.nested_type:
        _fill_json_names(nested, live.nested_types_by_name[nested.name])


def _as_proto(file: descriptor.FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    for message in proto.message_type:
        _fill_json_names(message, file.message_types_by_name[message.name])
    return proto


def reachable_files(roots: Iterable[descriptor.FileDescriptor]) -> descriptor_pb2.FileDescriptorSet:
    """`roots` and every file they import, transitively, each once."""
    found = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        file = pending.pop()
        if file.name in seen:
            continue
        seen.add(file.name)
        found.file.append(_as_proto(file))
        pending.extend(file.dependencies)
    return found

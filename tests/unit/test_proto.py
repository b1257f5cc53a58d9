"""The wire API (tap sink and ext_proc services): generated code is current, matches Envoy's
official definitions field by field, needs no xds-protos, and reads real Envoy output back
byte for byte."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.internal.decoder import _DecodeVarint32  # type: ignore[attr-defined]

from tap_emulator._proto.envoy.data.tap.v3 import wrapper_pb2
from tap_emulator._proto.envoy.service.ext_proc.v3 import external_processor_pb2
from tap_emulator._proto.envoy.service.tap.v3 import tap_pb2
from tests.helpers.descriptor_set import reachable_files
from tests.helpers.paths import HELPERS, REPO

Field = descriptor_pb2.FieldDescriptorProto

# Files we copy whole from Envoy's API (the others, such as core/v3/base.proto, are subsets:
# only what the two services reach).
WHOLE_FILES = (
    "envoy/data/tap/v3/common.proto",
    "envoy/data/tap/v3/http.proto",
    "envoy/data/tap/v3/transport.proto",
    "envoy/data/tap/v3/wrapper.proto",
    "envoy/extensions/filters/http/ext_proc/v3/processing_mode.proto",
    "envoy/service/ext_proc/v3/external_processor.proto",
    "envoy/service/tap/v3/tap.proto",
    "envoy/type/v3/http_status.proto",
    "envoy/type/v3/semantic_version.proto",
    "xds/core/v3/context_params.proto",
)
SERVICES = (
    "envoy.service.ext_proc.v3.ExternalProcessor/Process",
    "envoy.service.tap.v3.TapSinkService/StreamTaps",
)


def test_generated_code_is_up_to_date() -> None:
    check = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "generate_proto.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def _index(
    files: list[descriptor_pb2.FileDescriptorProto],
) -> dict[str, descriptor_pb2.DescriptorProto]:
    messages: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}"
        messages[name] = message
        for nested in message.nested_type:
            walk(name, nested)

    for file in files:
        for message in file.message_type:
            walk(file.package, message)
    return messages


def _enums(files: list[descriptor_pb2.FileDescriptorProto]) -> dict[str, list[tuple[str, int]]]:
    enums: dict[str, list[tuple[str, int]]] = {}

    def walk(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}"
        for enum in message.enum_type:
            enums[f"{name}.{enum.name}"] = [(v.name, v.number) for v in enum.value]
        for nested in message.nested_type:
            walk(name, nested)

    for file in files:
        for enum in file.enum_type:
            enums[f"{file.package}.{enum.name}"] = [(v.name, v.number) for v in enum.value]
        for message in file.message_type:
            walk(file.package, message)
    return enums


def _shape(message: descriptor_pb2.DescriptorProto) -> dict[str, tuple[object, ...]]:
    """Everything about a message's fields that the wire and JSON depend on."""
    oneofs = [oneof.name for oneof in message.oneof_decl]
    return {
        field.name: (
            field.number,
            Field.Type.Name(field.type),
            Field.Label.Name(field.label),
            field.type_name,
            oneofs[field.oneof_index] if field.HasField("oneof_index") else None,
            field.json_name,
            field.proto3_optional,
        )
        for field in message.field
    }


def _ours() -> list[descriptor_pb2.FileDescriptorProto]:
    roots = [tap_pb2.DESCRIPTOR, external_processor_pb2.DESCRIPTOR]
    return [f for f in reachable_files(roots).file if not f.name.startswith("google/")]


def _top_level_names(file: descriptor_pb2.FileDescriptorProto) -> set[str]:
    return {m.name for m in file.message_type} | {e.name for e in file.enum_type}


def _nested_names(message: descriptor_pb2.DescriptorProto) -> set[str]:
    return {m.name for m in message.nested_type} | {e.name for e in message.enum_type}


@pytest.fixture(scope="module")
def official() -> list[descriptor_pb2.FileDescriptorProto]:
    dump = subprocess.run(
        [sys.executable, str(HELPERS / "dump_xds_descriptors.py")], capture_output=True, check=False
    )
    if dump.returncode != 0 and b"No module named 'envoy" in dump.stderr:
        pytest.skip("xds-protos is not installed (it is in the test extras)")
    assert dump.returncode == 0, dump.stderr.decode()
    return list(descriptor_pb2.FileDescriptorSet.FromString(dump.stdout).file)


def test_every_message_we_define_matches_envoys_field_by_field(
    official: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    theirs = _index(official)
    ours = _index(_ours())
    assert len(ours) >= 50
    assert "envoy.service.ext_proc.v3.ProcessingRequest.AttributesEntry" in ours
    for name, message in sorted(ours.items()):
        assert name in theirs, f"{name} is not an Envoy message"
        assert _shape(message) == _shape(theirs[name]), name
        assert message.options.map_entry == theirs[name].options.map_entry, name
        assert _nested_names(message) == _nested_names(theirs[name]), name


def test_files_we_copy_whole_define_everything_envoys_do(
    official: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    theirs = {file.name: file for file in official}
    ours = {file.name: file for file in _ours()}
    assert set(WHOLE_FILES) <= set(ours)
    for name in WHOLE_FILES:
        assert ours[name].package == theirs[name].package, name
        assert _top_level_names(ours[name]) == _top_level_names(theirs[name]), name
    for name, file in ours.items():
        assert _top_level_names(file) <= _top_level_names(theirs[name]), name


def test_every_enum_we_define_matches_envoys(
    official: list[descriptor_pb2.FileDescriptorProto],
) -> None:
    theirs = _enums(official)
    ours = _enums(_ours())
    assert "envoy.extensions.filters.http.ext_proc.v3.ProcessingMode.BodySendMode" in ours
    assert "envoy.type.v3.StatusCode" in ours
    for name, values in ours.items():
        assert values == theirs[name], name


def test_every_type_the_services_reach_is_defined() -> None:
    """No field of ours points at a type we left out (it would decode as unknown bytes)."""
    files = _ours()
    ours = _index(files)
    enums = _enums(files)
    for name, message in ours.items():
        for field in message.field:
            if field.type_name.startswith(".google.") or not field.type_name:
                continue
            known = ours if field.type == Field.TYPE_MESSAGE else enums
            assert field.type_name.lstrip(".") in known, f"{name}.{field.name}"


def test_the_services_match_envoys(official: list[descriptor_pb2.FileDescriptorProto]) -> None:
    def methods(files: list[descriptor_pb2.FileDescriptorProto]) -> dict[str, tuple[object, ...]]:
        return {
            f"{file.package}.{service.name}/{method.name}": (
                method.input_type,
                method.output_type,
                method.client_streaming,
                method.server_streaming,
            )
            for file in files
            for service in file.service
            for method in service.method
        }

    theirs = methods(official)
    assert methods(_ours()) == {name: theirs[name] for name in SERVICES}


def test_ext_proc_service_imports_where_xds_protos_cannot() -> None:
    """The generated ext_proc code resolves only inside our package, as the image needs."""
    code = (
        "import tests.helpers.no_xds_server\n"
        "from tap_emulator._proto.envoy.service.ext_proc.v3 import external_processor_pb2_grpc\n"
        "assert external_processor_pb2_grpc.ExternalProcessorServicer\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr


def _length_delimited(data: bytes) -> list[bytes]:
    position, items = 0, []
    while position < len(data):
        size, position = _DecodeVarint32(data, position)
        items.append(data[position : position + size])
        position += size
    return items


def test_real_envoy_traces_round_trip_byte_for_byte(vectors: Path) -> None:
    checked = 0
    for directory in ("buffered", "buffered_zipkin"):
        for path in sorted((vectors / directory).glob("*.pb")):
            raw = path.read_bytes()
            assert wrapper_pb2.TraceWrapper.FromString(raw).SerializeToString() == raw, path
            checked += 1
    for directory in ("streamed", "streamed_zipkin"):
        for path in sorted((vectors / directory).glob("*.pb_length_delimited")):
            for raw in _length_delimited(path.read_bytes()):
                trace = wrapper_pb2.TraceWrapper.FromString(raw)
                assert trace.WhichOneof("trace") == "http_streamed_trace_segment", path
                assert trace.SerializeToString() == raw, path
                checked += 1
    assert checked > 100


def test_synthetic_stream_taps_requests_round_trip(vectors: Path) -> None:
    for path in sorted((vectors / "synthetic").glob("*.pb_length_delimited")):
        messages = _length_delimited(path.read_bytes())
        assert messages
        for raw in messages:
            request = tap_pb2.StreamTapsRequest.FromString(raw)
            # Node metadata is a map: its order on the wire is not fixed, its content is.
            assert tap_pb2.StreamTapsRequest.FromString(request.SerializeToString()) == request
            assert request.trace.SerializeToString() in raw, path
        first = tap_pb2.StreamTapsRequest.FromString(messages[0])
        assert first.identifier.node.id.startswith("sidecar~")

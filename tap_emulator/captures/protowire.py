"""Protobuf messages without their schema: the fields of a serialized message, read the way
`protoc --decode_raw` reads them, and with a schema when a FileDescriptorSet is at hand.

Without a schema a length-delimited field is ambiguous: it is shown as text when it is
printable UTF-8, else as an embedded message when it parses as one, else as bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError

_MAX_DEPTH = 32
_WIRE_VARINT, _WIRE_FIXED64, _WIRE_BYTES, _WIRE_FIXED32 = 0, 1, 2, 5
_TEXT_CONTROLS = frozenset("\t\r\n")


@dataclass(frozen=True, slots=True)
class RawField:
    """One field as the wire has it. Exactly one of `number_value`, `text`, `data_hex` and
    `fields` is set."""

    number: int
    wire_type: str  # varint, fixed64, fixed32, bytes
    number_value: int | None = None
    text: str | None = None
    data_hex: str | None = None
    fields: tuple[RawField, ...] | None = None


def printable_text(data: bytes) -> str | None:
    """`data` as text if it is UTF-8 without control characters other than whitespace."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any((ord(c) < 0x20 and c not in _TEXT_CONTROLS) or ord(c) == 0x7F for c in text):
        return None
    return text


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while position < len(data) and shift < 70:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    raise ValueError("bad varint")


def decode_raw(data: bytes, depth: int = 0) -> tuple[RawField, ...] | None:
    """The fields of `data` if it is a well-formed message, else None."""
    if depth > _MAX_DEPTH:
        return None
    fields: list[RawField] = []
    position = 0
    try:
        while position < len(data):
            key, position = _varint(data, position)
            number, wire = key >> 3, key & 7
            if number == 0:
                return None
            if wire == _WIRE_VARINT:
                value, position = _varint(data, position)
                fields.append(RawField(number, "varint", number_value=value))
            elif wire in (_WIRE_FIXED64, _WIRE_FIXED32):
                size = 8 if wire == _WIRE_FIXED64 else 4
                if position + size > len(data):
                    return None
                value = int.from_bytes(data[position : position + size], "little")
                position += size
                kind = "fixed64" if wire == _WIRE_FIXED64 else "fixed32"
                fields.append(RawField(number, kind, number_value=value))
            elif wire == _WIRE_BYTES:
                size, position = _varint(data, position)
                if position + size > len(data):
                    return None
                fields.append(_length_delimited(number, data[position : position + size], depth))
                position += size
            else:
                return None  # groups are long deprecated; treat as not a message
    except ValueError:
        return None
    return tuple(fields)


def _length_delimited(number: int, payload: bytes, depth: int) -> RawField:
    text = printable_text(payload)
    if text is not None:
        return RawField(number, "bytes", text=text)
    nested = decode_raw(payload, depth + 1) if payload else None
    if nested:
        return RawField(number, "bytes", fields=nested)
    return RawField(number, "bytes", data_hex=payload.hex())


class ProtoDescriptors:
    """Message types from a FileDescriptorSet (`protoc --include_imports
    --descriptor_set_out=FILE`), in a pool of their own, to decode gRPC messages by method."""

    def __init__(self, descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
        self._pool = descriptor_pool.DescriptorPool()
        for file in descriptor_set.file:
            self._pool.Add(file)

    @classmethod
    def from_file(cls, path: Path) -> ProtoDescriptors:
        """Raises ValueError naming the file when it is not a FileDescriptorSet."""
        try:
            data = path.read_bytes()
            return cls(descriptor_pb2.FileDescriptorSet.FromString(data))
        except (OSError, DecodeError, TypeError) as exc:
            raise ValueError(
                f"{path}: not a FileDescriptorSet ({exc}); make one with "
                "protoc --include_imports --descriptor_set_out=FILE your.proto"
            ) from exc

    def message_types(self, grpc_path: str) -> tuple[Descriptor, Descriptor] | None:
        """Input and output types of the method a gRPC path (`/pkg.Service/Method`) names."""
        service_name, _, method_name = grpc_path.strip("/").partition("/")
        try:
            service = self._pool.FindServiceByName(service_name)
        except KeyError:
            return None
        method = service.methods_by_name.get(method_name)
        if method is None:
            return None
        return method.input_type, method.output_type

    @staticmethod
    def to_json(descriptor: Descriptor, payload: bytes) -> str:
        """`payload` decoded as `descriptor`, as indented JSON; raises ValueError if it does
        not parse as that type."""
        message_class = message_factory.GetMessageClass(descriptor)
        try:
            message = message_class.FromString(payload)
        except DecodeError as exc:
            raise ValueError(f"not a {descriptor.full_name}: {exc}") from exc
        shown = json_format.MessageToDict(message, preserving_proto_field_name=True)
        return json.dumps(shown, indent=2, ensure_ascii=False)

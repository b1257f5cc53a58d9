"""atheris target: the pure naming rules on arbitrary header values and sender identities.

    python tests/fuzz/naming_target.py -max_total_time=600 NEW_DIR tests/fuzz/corpus/naming

The input is five length-prefixed text fields (authority, a trace header's name and value,
node id, tap id) and an Envoy trace id (see `decode_naming_input`; malformed input still
decodes to something). Every name built from them, in both formats and both directions,
must be safe and stay inside the output directory.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

_FIELDS = 5
_OUT = Path("/nonexistent-output-dir")


def encode_naming_input(
    authority: str, trace_key: str, trace_value: str, node_id: str, tap_id: str, envoy_id: int
) -> bytes:
    out = bytearray()
    for text in (authority, trace_key, trace_value, node_id, tap_id):
        raw = text.encode("utf-8", "surrogatepass")[:65_535]
        out += struct.pack(">H", len(raw)) + raw
    return bytes(out) + struct.pack(">Q", envoy_id % 2**64)


def decode_naming_input(data: bytes) -> tuple[list[str], int]:
    fields: list[str] = []
    position = 0
    for _ in range(_FIELDS):
        if position + 2 > len(data):
            fields.append("")
            continue
        (size,) = struct.unpack_from(">H", data, position)
        position += 2
        fields.append(data[position : position + size].decode("utf-8", "replace"))
        position += size
    tail = data[position : position + 8].ljust(8, b"\x00")
    return fields, struct.unpack(">Q", tail)[0]


def check_naming_input(data: bytes) -> None:
    from tap_emulator.derive.naming import (
        DEFAULT_TRACE_ID_HEADERS,
        Half,
        authority_from,
        build_stem,
        identity,
        prefix_for,
        trace_id_from,
    )
    from tap_emulator.labels import Direction
    from tap_emulator.layout import file_name
    from tests.fuzz.decode_and_name import check_name

    (authority, trace_key, trace_value, node_id, tap_id), envoy_id = decode_naming_input(data)
    found = {":authority": authority, trace_key.lower(): trace_value}
    trace_id = trace_id_from(found, DEFAULT_TRACE_ID_HEADERS, envoy_id)
    for default in Direction:
        sender = identity(tap_id, node_id, node_id, node_id or None, default)
        prefix = prefix_for(sender.direction, authority_from(found), sender.client_namespace)
        for half in (None, Half.REQUEST, Half.RESPONSE):
            stem = build_stem(prefix, trace_id, half)
            for sequence in (1, 2**64 - 1):
                check_name(file_name(stem.text, sequence), _OUT)


def main() -> None:
    import atheris

    with atheris.instrument_imports(include=["tap_emulator", "tests.fuzz"]):
        import tap_emulator.derive.naming  # noqa: F401
        import tests.fuzz.decode_and_name  # noqa: F401

    atheris.Setup(sys.argv, check_naming_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

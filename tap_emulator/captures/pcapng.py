"""A pcapng writer and the synthesized TCP/IP packets it holds.

The format (pcapng, IETF draft-ietf-opsawg-pcapng) needs three block kinds here: a Section
Header, one Interface Description (link type RAW: packets begin with their IPv4 or IPv6
header, so no invented MAC addresses), and an Enhanced Packet per packet, which may carry a
comment that Wireshark shows with the packet. Timestamps are in microseconds (the default
resolution). Everything is little-endian, as the section header's byte-order magic says.

`TcpSession` turns application bytes into a plausible TCP connection: the three-way
handshake, data in segments of at most `MSS_BYTES` with correct sequence and acknowledgement
numbers, an acknowledgement after each burst, and both FINs. IPv4 and TCP checksums are
computed, so no dissector flags them.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import BinaryIO

LINKTYPE_RAW = 101
MSS_BYTES = 1400
_SECTION_HEADER = 0x0A0D0D0A
_INTERFACE_DESCRIPTION = 0x00000001
_ENHANCED_PACKET = 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_END, _OPT_COMMENT = 0, 1
_SHB_USERAPPL = 4
_IF_NAME = 2
_FIN, _SYN, _PSH, _ACK = 0x01, 0x02, 0x08, 0x10
_WINDOW = 65535
_TTL = 64
_TCP = 6


def _pad4(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % 4)


def _options(options: list[tuple[int, bytes]]) -> bytes:
    if not options:
        return b""
    encoded = b"".join(
        struct.pack("<HH", code, len(value)) + _pad4(value) for code, value in options
    )
    return encoded + struct.pack("<HH", _OPT_END, 0)


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


class PcapngWriter:
    """Writes a section with one RAW-IP interface; `packet()` appends one packet."""

    def __init__(self, out: BinaryIO, application: str) -> None:
        self._out = out
        self.packets = 0
        section = struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1)
        section += _options([(_SHB_USERAPPL, application.encode())])
        out.write(_block(_SECTION_HEADER, section))
        interface = struct.pack("<HHI", LINKTYPE_RAW, 0, 0)
        interface += _options([(_IF_NAME, b"tap-emulator (synthesized from tap captures)")])
        out.write(_block(_INTERFACE_DESCRIPTION, interface))

    def packet(self, time_seconds: float, data: bytes, comment: str | None = None) -> None:
        micros = max(round(time_seconds * 1_000_000), 0)
        body = struct.pack("<IIIII", 0, micros >> 32, micros & 0xFFFFFFFF, len(data), len(data))
        body += _pad4(data)
        if comment:
            body += _options([(_OPT_COMMENT, comment.encode("utf-8"))])
        self._out.write(_block(_ENHANCED_PACKET, body))
        self.packets += 1


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class _Addresses:
    """Both ends of a connection and how to wrap a TCP segment in IP between them."""

    def __init__(self, client: tuple[str, int], server: tuple[str, int]) -> None:
        self.client_ip = ipaddress.ip_address(client[0])
        self.server_ip = ipaddress.ip_address(server[0])
        if self.client_ip.version != self.server_ip.version:
            raise ValueError("client and server addresses must both be IPv4 or both IPv6")
        self.client_port, self.server_port = client[1], server[1]
        self._ip_id = 0

    def ip_packet(self, from_client: bool, tcp: bytearray) -> bytes:
        """`tcp` (its checksum field zero) with its checksum filled in, wrapped in IP."""
        source, target = (
            (self.client_ip, self.server_ip) if from_client else (self.server_ip, self.client_ip)
        )
        length = len(tcp)
        if source.version == 4:
            pseudo = source.packed + target.packed + struct.pack("!BBH", 0, _TCP, length)
        else:
            pseudo = source.packed + target.packed + struct.pack("!I3xB", length, _TCP)
        struct.pack_into("!H", tcp, 16, _checksum(pseudo + tcp))
        segment = bytes(tcp)
        if source.version == 6:
            header = struct.pack("!IHBB", 6 << 28, length, _TCP, _TTL)
            return header + source.packed + target.packed + segment
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        ip = bytearray(
            struct.pack("!BBHHHBBH", 0x45, 0, 20 + length, self._ip_id, 0x4000, _TTL, _TCP, 0)
            + source.packed
            + target.packed
        )
        struct.pack_into("!H", ip, 10, _checksum(bytes(ip)))
        return bytes(ip) + segment


class TcpSession:
    """One synthesized TCP connection, written packet by packet as its data is sent."""

    _STEP_SECONDS = 0.000_010  # between packets that would leave back to back

    def __init__(
        self,
        writer: PcapngWriter,
        client: tuple[str, int],
        server: tuple[str, int],
        start_seconds: float,
        initial_sequences: tuple[int, int] = (1_000_000, 2_000_000),
    ) -> None:
        self._writer = writer
        self._addresses = _Addresses(client, server)
        self._next = {True: initial_sequences[0] & 0xFFFFFFFF, False: initial_sequences[1]}
        self._clock = start_seconds
        self._pending_comment: str | None = None
        self._handshake()

    def comment_next(self, comment: str) -> None:
        """Attach `comment` to the next packet written."""
        self._pending_comment = comment

    def _segment(self, from_client: bool, flags: int, payload: bytes = b"") -> None:
        ports = self._addresses
        source, target = (
            (ports.client_port, ports.server_port)
            if from_client
            else (ports.server_port, ports.client_port)
        )
        sequence = self._next[from_client]
        acknowledged = self._next[not from_client] if flags & _ACK else 0
        options = struct.pack("!BBH", 2, 4, MSS_BYTES) if flags & _SYN else b""
        offset_words = (20 + len(options)) // 4
        header = struct.pack(
            "!HHIIBBHHH",
            source,
            target,
            sequence,
            acknowledged,
            offset_words << 4,
            flags,
            _WINDOW,
            0,
            0,
        )
        segment = bytearray(header + options + payload)
        self._writer.packet(
            self._clock, ports.ip_packet(from_client, segment), self._pending_comment
        )
        self._pending_comment = None
        consumed = len(payload) + (1 if flags & (_SYN | _FIN) else 0)
        self._next[from_client] = (sequence + consumed) & 0xFFFFFFFF
        self._clock += self._STEP_SECONDS

    def _handshake(self) -> None:
        self._segment(True, _SYN)
        self._segment(False, _SYN | _ACK)
        self._segment(True, _ACK)

    def send(self, from_client: bool, data: bytes, at_seconds: float | None = None) -> None:
        """Send `data` from one side (in MSS-sized segments); the other side acknowledges."""
        if not data:
            return
        if at_seconds is not None:
            self._clock = max(self._clock, at_seconds)
        for start in range(0, len(data), MSS_BYTES):
            self._segment(from_client, _PSH | _ACK, data[start : start + MSS_BYTES])
        self._segment(not from_client, _ACK)

    def close(self) -> None:
        """Client FIN, server FIN, client's last ACK."""
        self._segment(True, _FIN | _ACK)
        self._segment(False, _FIN | _ACK)
        self._segment(True, _ACK)

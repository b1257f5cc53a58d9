"""Which pcapng writer the capture export uses: ours (tap_emulator/captures/pcapng.py)
against dpkt, python-pcapng and scapy, writing the same synthesized packets.

Run in a scratch virtualenv, since the project depends on none of them:

    python3 -m venv /tmp/pcapcmp
    /tmp/pcapcmp/bin/pip install dpkt==1.9.8 python-pcapng==2.1.1 scapy==2.8.0
    PYTHONPATH=. /tmp/pcapcmp/bin/python benchmarks/pcapng/compare_writers.py

Prints packets per second for each writer and whether tshark (if on PATH) reads every
packet back; docs/dependencies.md has the result and the choice.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable

from tap_emulator.captures.pcapng import LINKTYPE_RAW, PcapngWriter, TcpSession

PACKETS_WANTED = 60_000


def packets() -> list[tuple[float, bytes]]:
    """Real synthesized packets: TCP connections carrying a small HTTP exchange."""
    captured: list[tuple[float, bytes]] = []

    class Recorder(PcapngWriter):
        def packet(self, time_seconds: float, data: bytes, comment: str | None = None) -> None:
            captured.append((time_seconds, data))

    recorder = Recorder(io.BytesIO(), "compare")
    number = 0
    while len(captured) < PACKETS_WANTED:
        number += 1
        session = TcpSession(
            recorder, ("192.0.2.1", 40000 + number % 20000), ("198.51.100.1", 80), float(number)
        )
        session.send(True, b"GET /item HTTP/1.1\r\nhost: svc\r\n\r\n")
        session.send(False, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        session.close()
    return captured


def ours(path: str, items: list[tuple[float, bytes]]) -> None:
    with open(path, "wb") as out:
        writer = PcapngWriter(out, "compare")
        for stamp, data in items:
            writer.packet(stamp, data)


def with_dpkt(path: str, items: list[tuple[float, bytes]]) -> None:
    import dpkt

    with open(path, "wb") as out:
        writer = dpkt.pcapng.Writer(out, linktype=LINKTYPE_RAW)
        for stamp, data in items:
            writer.writepkt(data, ts=stamp)


def with_python_pcapng(path: str, items: list[tuple[float, bytes]]) -> None:
    from pcapng import FileWriter, blocks

    header = blocks.SectionHeader(options={"shb_userappl": "compare"})
    header.new_member(blocks.InterfaceDescription, link_type=LINKTYPE_RAW)
    with open(path, "wb") as out:
        writer = FileWriter(out, header)
        for stamp, data in items:
            packet = header.new_member(blocks.EnhancedPacket)
            micros = int(stamp * 1_000_000)
            packet.timestamp_high, packet.timestamp_low = micros >> 32, micros & 0xFFFFFFFF
            packet.packet_data = data
            writer.write_block(packet)


def with_scapy(path: str, items: list[tuple[float, bytes]]) -> None:
    from scapy.layers.inet import IP
    from scapy.utils import PcapNgWriter

    writer = PcapNgWriter(path)
    writer.linktype = LINKTYPE_RAW
    for stamp, data in items:
        packet = IP(data)
        packet.time = stamp
        writer.write(packet)
    writer.close()


def tshark_count(path: str) -> str:
    tshark = shutil.which("tshark")
    if tshark is None:
        return "tshark not installed"
    done = subprocess.run(
        [tshark, "-r", path, "-T", "fields", "-e", "frame.number"],
        capture_output=True,
        text=True,
        check=False,
    )
    return (
        f"tshark read {len(done.stdout.split())} packets"
        if done.returncode == 0
        else done.stderr[:200]
    )


def main() -> None:
    items = packets()
    writers: dict[str, Callable[[str, list[tuple[float, bytes]]], None]] = {
        "ours": ours,
        "dpkt": with_dpkt,
        "python-pcapng": with_python_pcapng,
        "scapy": with_scapy,
    }
    for name, write in writers.items():
        with tempfile.NamedTemporaryFile(suffix=".pcapng") as file:
            started = time.perf_counter()
            try:
                write(file.name, items)
            except Exception as exc:  # a writer that cannot do it is a result too
                print(f"{name:14} failed: {exc!r}")
                continue
            seconds = time.perf_counter() - started
            print(f"{name:14} {len(items) / seconds:10,.0f} packets/s  {tshark_count(file.name)}")


if __name__ == "__main__":
    main()

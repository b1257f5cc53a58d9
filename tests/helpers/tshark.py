"""tshark (Wireshark's command line), the judge of the pcapng export: found on PATH, or
installed from Debian's registry where the tests run as root (CI does), else a reason to
skip that the test run prints."""

from __future__ import annotations

import os
import shutil
import subprocess

_INSTALL_SECONDS = 600
# Between values of one field that occurs several times in a packet; header values hold
# commas (`identity, deflate, gzip`), so tshark's default aggregator would be ambiguous.
AGGREGATOR = "\x1f"


def _apt_get(*args: str) -> bool:
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(
            ["apt-get", *args],
            env=environment,
            capture_output=True,
            timeout=_INSTALL_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def find_or_install_tshark() -> tuple[str | None, str]:
    """The tshark binary, or None and why not."""
    found = shutil.which("tshark")
    if found:
        return found, ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, "tshark is not installed and apt-get cannot install it here (not root)"
    if not _apt_get("install", "-y", "--no-install-recommends", "tshark"):
        _apt_get("update")
        _apt_get("install", "-y", "--no-install-recommends", "tshark")
    found = shutil.which("tshark")
    if found:
        return found, ""
    return None, "tshark is not installed and `apt-get install -y tshark` did not install it"


def fields(
    tshark: str, capture: str, display_filter: str, names: list[str], extra: list[str]
) -> list[dict[str, list[str]]]:
    """One dict per packet matching `display_filter`: each field's values, in order."""
    command = [tshark, "-r", capture, *extra, "-Y", display_filter, "-T", "fields"]
    for name in names:
        command += ["-e", name]
    command += ["-E", "separator=\t", "-E", f"aggregator={AGGREGATOR}", "-E", "occurrence=a"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    packets = []
    for line in done.stdout.splitlines():
        cells = line.split("\t")
        packets.append(
            {
                name: cell.split(AGGREGATOR) if cell else []
                for name, cell in zip(names, cells, strict=True)
            }
        )
    return packets

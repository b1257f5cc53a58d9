"""`list` on 200,000 files streams: its first rows arrive while the last file in directory
order is still unread, and its peak memory stays where it is for 20,000 files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.captures import AUTHORITY, buffered, segment
from tests.helpers.paths import REPO

pytestmark = pytest.mark.slow

MAX_OPEN = 2000
OLD_ATIME_NS = 10**18  # 2001: before any file here was written
# Runs `tap-emulator ARGS...` in-process and reports its peak RSS from /proc at the end.
PEAK_RSS_WRAPPER = (
    "import re, sys\n"
    "from tap_emulator.cli import main\n"
    "status = main(sys.argv[1:])\n"
    "sys.stdout.flush()\n"
    "status_text = open('/proc/self/status').read()\n"
    "peak = re.search(r'VmHWM:\\s+(\\d+) kB', status_text).group(1)\n"
    "print(f'peak_rss_kib={peak}', file=sys.stderr)\n"
    "sys.exit(status)\n"
)


@pytest.fixture
def fast_dir() -> Iterator[Path]:
    """A directory on tmpfs where there is one (many small files, fast)."""
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    directory = Path(tempfile.mkdtemp(prefix="tap-emulator-scale-", dir=base))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def make_capture(directory: Path, files: int) -> int:
    """Half the files buffered transactions, half the pieces of two-piece streamed ones
    (request headers, response headers: nothing proves their end, so they stay open until
    evicted). Returns the number of transactions."""
    request = [(":authority", AUTHORITY), (":path", "/item"), (":method", "GET")]
    whole = buffered(request, [(":status", "200")], response_body=b"ok")
    opening = segment(7, "request_headers", headers=[*request, (":method", "POST")])
    answer = segment(7, "response_headers", headers=[(":status", "503")])
    folder = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for number in range(files // 2):
            _write(folder, f"{AUTHORITY}-{number:032x}-1.pb", whole)
        for number in range(files // 4):
            stem = f"{AUTHORITY}-f{number:031x}"
            _write(folder, f"{stem}-1.pb", opening)
            _write(folder, f"{stem}-2.pb", answer)
    finally:
        os.close(folder)
    return files // 2 + files // 4


def _write(folder: int, name: str, data: bytes) -> None:
    handle = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=folder)
    try:
        os.write(handle, data)
    finally:
        os.close(handle)


def list_command(directory: Path) -> list[str]:
    return [
        sys.executable,
        "-c",
        PEAK_RSS_WRAPPER,
        "list",
        str(directory),
        "--max-open",
        str(MAX_OPEN),
    ]


def peak_rss_kib(stderr: str) -> int:
    match = re.search(r"peak_rss_kib=(\d+)", stderr)
    assert match, stderr
    return int(match.group(1))


def last_in_directory_order(directory: Path) -> Path:
    last = None
    with os.scandir(directory) as entries:
        for entry in entries:
            last = entry.path
    assert last is not None
    return Path(last)


def test_list_streams_200000_files_in_bounded_memory(fast_dir: Path) -> None:
    small, large = fast_dir / "small", fast_dir / "large"
    small.mkdir()
    large.mkdir()
    small_count = make_capture(small, 20_000)
    large_count = make_capture(large, 200_000)
    sentinel = last_in_directory_order(large)
    os.utime(sentinel, ns=(OLD_ATIME_NS, sentinel.stat().st_mtime_ns))

    small_run = subprocess.run(
        list_command(small), capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )
    process = subprocess.Popen(
        list_command(large), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    assert process.stdout is not None and process.stderr is not None
    header, first_row = process.stdout.readline(), process.stdout.readline()
    sentinel_atime_at_first_row = sentinel.stat().st_atime_ns
    rows = 1 + sum(1 for _ in process.stdout)
    process.stdout.close()
    with process.stderr:
        stderr = process.stderr.read()
    assert process.wait(120) == 0, stderr

    assert header.startswith("TIME (UTC)") and (" GET " in first_row or " POST " in first_row)
    assert sentinel_atime_at_first_row == OLD_ATIME_NS, "the last file was read before row 1"
    assert sentinel.stat().st_atime_ns != OLD_ATIME_NS, "the last file was never read"
    assert rows == large_count
    assert small_run.returncode == 0, small_run.stderr
    assert len(small_run.stdout.splitlines()) == 1 + small_count
    growth_kib = peak_rss_kib(stderr) - peak_rss_kib(small_run.stderr)
    print(
        f"peak RSS: {peak_rss_kib(small_run.stderr)} KiB for 20,000 files, "
        f"{peak_rss_kib(stderr)} KiB for 200,000"
    )
    assert growth_kib < 10 * 1024, f"peak RSS grew by {growth_kib} KiB with 10x the files"

"""The relay's peak memory when "Envoy" sends one huge JSON object, by shape of object.

    .venv/bin/python benchmarks/relay/memory.py [--shape lists|empties|headers|body ...]
        [--size-mib 60] [--repo PATH] [-- RELAY FLAGS...]

A scripted admin endpoint sends one real trace, then the huge object, then one more trace;
the relay forwards to a real emulator. Printed per shape: the relay's peak resident memory
(VmHWM) before and after the object, how long the relay took to get past it, and how it
counted it. `--repo` runs the relay of another checkout (to compare with an older one);
flags after `--` go to the relay (for example `--max-trace-bytes 64MiB`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.helpers.fake_envoy_admin import (  # noqa: E402
    ChunkWriter,
    FakeEnvoyAdmin,
    admin_sample_objects,
    sample_inbound_names,
)
from tests.helpers.harness import Processes  # noqa: E402
from tests.helpers.relay_checks import wait_until  # noqa: E402

MiB = 1 << 20


def huge_object(shape: str, size_bytes: int) -> bytes:
    """About `size_bytes` of one JSON object: a headers list of `[]`, of `{}`, of real
    headers, or one base64 body."""

    def headers(item: bytes) -> bytes:
        count = size_bytes // (len(item) + 1)
        items = b",".join([item] * count)
        return b'{"http_buffered_trace": {"request": {"headers": [' + items + b"]}}}"

    if shape == "lists":
        return headers(b"[]")
    if shape == "empties":
        return headers(b"{}")
    if shape == "headers":
        return headers(b'{"key":"x-h","value":"v"}')
    body = b"QUJD" * (size_bytes // 4)
    return b'{"http_buffered_trace": {"response": {"body": {"as_bytes": "' + body + b'"}}}}'


def peak_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1))  # type: ignore[union-attr]


async def measure(shape: str, size_bytes: int, repo: Path, flags: list[str]) -> dict[str, object]:
    objects = admin_sample_objects()
    huge = huge_object(shape, size_bytes)
    go = asyncio.Event()

    async def script(attach: int, out: ChunkWriter) -> None:
        await out.send(objects[0])
        await go.wait()
        for start in range(0, len(huge), MiB):
            await out.send(huge[start : start + MiB])
        await out.send(objects[1])

    admin = FakeEnvoyAdmin(script)
    url = await admin.start()
    work = Path(tempfile.mkdtemp(prefix="relay-memory-"))
    processes = Processes(work)
    output = work / "out"
    try:
        _emulator, target = await asyncio.to_thread(
            processes.emulator, output, "--max-message-bytes", str(512 * MiB)
        )
        relay = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tap_emulator", "relay", "--envoy-admin", url, "--to", target,
            "--streamed", *flags,
            cwd=repo, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert await wait_until(lambda: len(list(output.glob("*.pb"))) == 1)
        before = peak_kib(relay.pid)
        started = time.monotonic()
        go.set()
        tail = output / sample_inbound_names()[1]  # the trace sent after the huge object
        await wait_until(tail.exists, within_seconds=600)
        seconds = time.monotonic() - started
        after = peak_kib(relay.pid)
        relay.terminate()
        _, err = await relay.communicate()
        log = err.decode()
        totals = next((line for line in log.splitlines() if "relay stopped" in line), "")
        counted = dict(re.findall(r"(oversize|undecodable|read)=(\d+)", totals))
        return {
            "shape": shape,
            "object_mib": round(len(huge) / MiB, 1),
            "peak_before_mib": round(before / 1024),
            "peak_after_mib": round(after / 1024),
            "seconds": round(seconds, 1),
            **counted,
        }
    finally:
        processes.close()
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", choices=("lists", "empties", "headers", "body"))
    parser.add_argument("--size-mib", type=float, default=60)
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose relay runs")
    args, flags = parser.parse_known_args()
    flags = [flag for flag in flags if flag != "--"]
    for shape in args.shape or ["lists", "empties", "headers", "body"]:
        result = asyncio.run(measure(shape, int(args.size_mib * MiB), args.repo, flags))
        print(json.dumps(result))


if __name__ == "__main__":
    main()

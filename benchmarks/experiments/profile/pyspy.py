"""Profile the emulator's hot path under load with py-spy (sampling, whole process, native).

Starts the product server on a fresh tmpfs, drives it with the standard load generators
(closed loop, ``--streams``), and records ``py-spy record --pid`` for ``--seconds``: a
flame graph (SVG) or the raw collapsed stacks (text, for `summarize`), then stops
everything and verifies the files. Output goes to ``benchmarks/results/profile/`` (not
tracked) unless ``--out`` says otherwise.

    python benchmarks/experiments/profile/pyspy.py --seconds 15 --native --rate 100
    python benchmarks/experiments/profile/pyspy.py --summarize benchmarks/results/profile/x.txt
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

import bench  # noqa: E402
from load.verify import verify  # noqa: E402

PY_SPY = Path(sys.executable).with_name("py-spy")

#: Buckets for the breakdown, matched in order against each sample's frames (innermost first).
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    (
        "writer thread: open/write/link/unlink syscalls",
        ("write/publisher.py", "_link_free", "_publish_batch"),
    ),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("FromString (parse)", ("_decode (tap_emulator/ingest/",)),
    ("SerializeToString", ("SerializeToString",)),
    ("redaction", ("redact_trace", "_redact_headers")),
    ("sequence floor: stat() per new stem", ("highest_published", "_exists")),
    ("naming (find_header, trace id, stem)", ("derive/naming.py",)),
    ("correlation tables (LRU)", ("derive/correlate.py",)),
    ("derive (rest)", ("derive/deriver.py",)),
    ("WriterPool queue / settle", ("write/pool.py",)),
    ("ingest handler (rest)", ("tap_emulator/ingest/",)),
    ("grpc.aio read path (cygrpc, _server)", ("grpc/_cython", "cygrpc", "grpc/aio", "_server.py")),
    ("event loop (uvloop/asyncio)", ("uvloop", "asyncio")),
]


def summarize(collapsed: Path) -> list[tuple[str, int, float]]:
    """Share of samples per bucket, by thread: main loop and writer threads separately."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        thread = frames[0]
        inner_first = list(reversed(frames))
        label = "other"
        for name, needles in BUCKETS:
            if any(n in f for f in inner_first for n in needles):
                label = name
                break
        if "tap-writer" in thread or "ThreadPoolExecutor" in thread:
            label = "[writer threads] " + label
        counts[label] += count
    return [(k, v, v / total) for k, v in counts.most_common()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--rate", type=float, default=200.0, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=HERE.parents[1] / "results" / "profile")
    parser.add_argument("--summarize", type=Path, default=None)
    parser.add_argument("--native", action="store_true", help="include C/Cython frames")
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    parser.add_argument("--svg", action="store_true", help="write a flame graph instead of raw")
    parser.add_argument("--name", default="emulator", help="output file stem")
    parser.add_argument(
        "--product-dir", type=Path, default=None, help="profile the tap_emulator found here"
    )
    args = parser.parse_args()
    if args.summarize:
        for name, count, share in summarize(args.summarize):
            print(f"{share:7.1%} {count:8d}  {name}")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if args.product_dir is not None:
        bench.PRODUCT[0] = args.product_dir.resolve()
    options = bench.parse_args(["--streams", str(args.streams)])
    runner = bench.Bench(options)
    name = args.name
    try:
        with runner.scratch.directory() as directory:
            server = runner.start_emulator(directory)
            clients = runner.start_clients(server.port, args.streams, 0.0)
            time.sleep(1.0)
            before = server.snapshot()
            command = [
                str(PY_SPY),
                "record",
                "--pid",
                str(server.pid),
                "--duration",
                str(int(args.seconds)),
                "--rate",
                str(int(args.rate)),
                "--threads",
                "--format",
                "flamegraph" if args.svg else "raw",
                "--output",
                str(args.out / f"{name}.{'svg' if args.svg else 'txt'}"),
            ]
            if args.native:
                command.append("--native")  # needs the target paused for each sample
            else:
                command.append("--nonblocking")
            if args.gil:
                command.append("--gil")
            record = subprocess.run(command, capture_output=True, text=True, check=False)
            after = server.snapshot()
            sent = clients.stop()
            server.proc.stop()
            checked, _ = verify(directory, runner.catalog, clients.tag, sent)
    finally:
        bench.kill_children()
        runner.scratch.close()
    print(record.stderr[-800:])
    elapsed = after["t"] - before["t"]
    messages = after["messages"] - before["messages"]
    cpu = after["cpu_s"] - before["cpu_s"]
    print(
        f"{messages / elapsed:,.0f} msg/s under the profiler, {cpu / elapsed:.2f} server cores,"
        f" {cpu / max(messages, 1) * 1e6:.1f} us CPU per message; lost {checked.lost}, "
        f"unexpected {checked.unexpected}"
    )
    if args.svg:
        return
    for label, count, share in summarize(args.out / f"{name}.txt"):
        print(f"{share:7.1%} {count:8d}  {label}")


if __name__ == "__main__":
    main()

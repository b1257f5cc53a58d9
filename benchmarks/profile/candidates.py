"""Measure the optimization candidates side by side: each a variant server, interleaved.

Every candidate is a `variants.py` wrapper (the product with one change patched in) or the
product with different settings, possibly several processes sharing the tap port
(SO_REUSEPORT). Each run gets a fresh tmpfs, the standard load (closed loop, ``--streams``
streams from two load-generator processes), a warm-up and a measured window, and is
verified file by file. Candidates run in a rotating order, ``--repeat`` times; the table
shows medians. Throughput is files/s from the servers' own counter (one file per message
in the plain format), so variants that silence metrics compare fairly.

    python benchmarks/profile/candidates.py --repeat 3 --window 6
    python benchmarks/profile/candidates.py --only product,fast,reuseport2
    python benchmarks/profile/candidates.py --rate 5000   # CPU per file at equal load
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import bench  # noqa: E402
from load.verify import verify  # noqa: E402


@dataclass(frozen=True)
class Candidate:
    name: str
    variant: str
    flags: tuple[str, ...] = ()
    processes: int = 1
    what: str = ""


CANDIDATES = [
    Candidate("product", "product", what="the product as it is (uvloop, batch 64, 2 writers)"),
    Candidate("asyncio", "asyncio", what="default asyncio loop instead of uvloop"),
    Candidate(
        "passthrough",
        "passthrough",
        what="write the trace's bytes as received when nothing can need redaction",
    ),
    Candidate("nostat", "nostat", what="no stat() on the event loop for stems new since start"),
    Candidate("nometrics", "nometrics", what="per-message metric updates as no-ops"),
    Candidate("inline", "inline", what="publish batches on the event loop (no thread hop)"),
    Candidate(
        "batch1",
        "product",
        ("--writer-batch-max-items", "1"),
        what="one executor hop per file (writer_batch_max_items 1)",
    ),
    Candidate("writers1", "product", ("--writers", "1"), what="one writer task/thread"),
    Candidate("fast", "fast", what="passthrough + nostat"),
    Candidate(
        "reuseport2",
        "reuseport",
        processes=2,
        what="two product processes sharing the port (SO_REUSEPORT)",
    ),
    Candidate(
        "fast-reuseport2", "fast+reuseport", processes=2, what="two fast processes sharing the port"
    ),
    Candidate("fastest", "fastest", what="passthrough + nostat + inline"),
    Candidate(
        "fastest-reuseport2",
        "fastest+reuseport",
        processes=2,
        what="two fastest processes sharing the port",
    ),
]


class MultiServer:
    """Several server processes measured as one: counters and CPU summed, RSS max."""

    def __init__(self, servers: list[bench.Server]) -> None:
        self.servers = servers
        self.port = servers[0].port

    @property
    def pid(self) -> int:
        return self.servers[0].pid

    def snapshot(self) -> dict[str, Any]:
        snaps = [s.snapshot() for s in self.servers]
        total: dict[str, Any] = {
            "t": statistics.mean(s["t"] for s in snaps),
            "wall_ns": snaps[0]["wall_ns"],
            "buckets": {},
        }
        for key in ("messages", "bytes", "files", "cpu_s"):
            total[key] = sum(s.get(key, 0.0) for s in snaps)
        total["hwm_kib"] = max(s["hwm_kib"] for s in snaps)
        total["rss_kib"] = sum(s["rss_kib"] for s in snaps)
        total["per_process_files"] = [s.get("files", 0.0) for s in snaps]
        return total


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def run_one(runner: bench.Bench, candidate: Candidate, streams: int, rep: int) -> dict[str, Any]:
    args = runner.args
    print(f"  rep {rep}: {candidate.name}", flush=True)
    with runner.scratch.directory() as directory:
        port = free_port() if candidate.processes > 1 else 0
        servers = [
            runner.start_emulator(directory, candidate.variant, flags=candidate.flags, port=port)
            for _ in range(candidate.processes)
        ]
        server = MultiServer(servers)
        try:
            clients = runner.start_clients(server.port, streams, runner.args.rate)
            run, sent = runner.measure(
                "candidates",
                server,
                clients,
                warmup=args.warmup,
                window=args.window,
            )
        finally:
            statuses = [s.proc.stop() for s in servers]
        checked, _ = verify(directory, runner.catalog, clients.tag, sent)
        window = (run["_before"]["wall_ns"], run["_after"]["wall_ns"])
        split = [
            round(b - a)
            for a, b in zip(
                run["_before"]["per_process_files"], run["_after"]["per_process_files"], strict=True
            )
        ]
        run.update(runner._verified(checked, window, directory, clients.tag, sent))
    run.update(
        candidate=candidate.name,
        rep=rep,
        streams=streams,
        exit_status=statuses,
        files_per_process=split,
    )
    run["server_cpu_s_per_10k_files"] = round(
        run["server_cores"] * run["window_s"] / max(run["files_per_s"] * run["window_s"], 1) * 1e4,
        4,
    )
    return runner._keep(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--window", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--only", default="", help="comma-separated candidate names")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="open loop at this msg/s (0: closed loop)"
    )
    parser.add_argument("--json", type=Path, default=HERE / "candidates.json")
    args = parser.parse_args()
    chosen = [c for c in CANDIDATES if not args.only or c.name in args.only.split(",")]
    options = bench.parse_args(
        ["--streams", str(args.streams), "--window", str(args.window), "--warmup", str(args.warmup)]
    )
    options.rate = args.rate
    runner = bench.Bench(options)
    machine = bench.describe_machine()
    started = time.monotonic()
    try:
        for rep in range(args.repeat):
            shift = rep % len(chosen)
            for candidate in chosen[shift:] + chosen[:shift]:
                run_one(runner, candidate, args.streams, rep)
    finally:
        bench.kill_children()
        runner.scratch.close()
    machine["loadavg_after"] = [round(x, 2) for x in __import__("os").getloadavg()]
    table = []
    base = None
    for candidate in chosen:
        runs = [r for r in runner.runs if r["candidate"] == candidate.name]
        row = {
            "candidate": candidate.name,
            "what": candidate.what,
            "files_per_s": round(statistics.median(r["files_per_s"] for r in runs), 1),
            "files_per_s_all": [r["files_per_s"] for r in runs],
            "server_cpu_s_per_10k_files": round(
                statistics.median(r["server_cpu_s_per_10k_files"] for r in runs), 4
            ),
            "server_cores": round(statistics.median(r["server_cores"] for r in runs), 2),
            "client_cores": round(statistics.median(r["client_cores"] for r in runs), 2),
            "other_cores": round(statistics.median(r["other_cores"] for r in runs), 2),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "lost": sum(r["lost"] for r in runs),
            "unexpected": sum(r["verified"]["unexpected"] for r in runs),
        }
        if candidate.name == "product":
            base = row
        table.append(row)
    for row in table:
        if base:
            row["vs_product"] = round(row["files_per_s"] / base["files_per_s"], 3)
            row["cpu_vs_product"] = round(
                row["server_cpu_s_per_10k_files"] / base["server_cpu_s_per_10k_files"], 3
            )
    result = {
        "machine": machine,
        "config": vars(args) | {"json": str(args.json)},
        "duration_s": round(time.monotonic() - started, 1),
        "table": table,
        "runs": runner.runs,
    }
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(
        "| candidate | files/s (median) | vs product | server CPU s/10k | vs product | "
        "server cores | client cores | other cores | peak RSS MB | lost |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in table:
        print(
            f"| {row['candidate']} | {row['files_per_s']:,.0f} | {row.get('vs_product', 1):.2f}"
            f" | {row['server_cpu_s_per_10k_files']:.3f} | {row.get('cpu_vs_product', 1):.2f}"
            f" | {row['server_cores']:.2f} | {row['client_cores']:.2f} | "
            f"{row['other_cores']:.2f} | {row['peak_rss_mb']:.0f} | {row['lost']} |"
        )


if __name__ == "__main__":
    main()

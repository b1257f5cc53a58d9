"""Ingest throughput with forwarding on against off: same run, same load, same machine.

Each repeat runs both phases, in an order that rotates from one repeat to the next:

- ``off``: the emulator exactly as ``make bench`` runs it (files on a tmpfs, closed-loop load
  of ``--streams`` streams from the benchmark's load generators);
- ``on``: the same, plus ``--forward-to`` a receive-only TapSinkService started for the run
  (``ceilings.py receive``: the product's transport with a handler that only counts).

The figure is the messages/s the emulator accepted (its own counter, over the window). The
ratio is the median of ``on`` over the median of ``off``; the goal is at least 0.8. Then both
phases run once more in open loop at ``--load-fraction`` (default 0.5) of the closed-loop
``off`` median: below saturation, does forwarding cost the mesh anything? Beside it:
what the sink received (how much of the load was forwarded), the forward queue's drops, and CPU
per 10k messages of the emulator and of the sink (the sink shares the two cores too, so part
of the cost of ``on`` is the tool's, which a real deployment runs elsewhere).

    .venv/bin/python benchmarks/forward/throughput.py                  # ~1 min
    .venv/bin/python benchmarks/forward/throughput.py --repeat 3 --window 8

Writes ``benchmarks/results/forward.json`` (and ``--out``). Needs root to mount a tmpfs per run
(otherwise ``/dev/shm`` directories are used); binds 127.0.0.1 only; every process it starts
is ended by its pid.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parents[1]
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import bench  # noqa: E402
import procs  # noqa: E402

RESULT = BENCHMARKS / "results" / "forward.json"
GOAL = 0.8

Json = dict[str, Any]


def forward_counters(metrics_port: int) -> Json:
    """The emulator's forwarding counters: traces written to the tool, dropped, queued."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found = {"forwarded": 0.0, "dropped": 0.0, "queue_items": 0.0}
    names = {
        "tap_emulator_forward_messages_total": "forwarded",
        "tap_emulator_forward_dropped_total": "dropped",
        "tap_emulator_forward_queue_items": "queue_items",
    }
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name, _, value = line.rpartition(" ")
        key = names.get(name.split("{", 1)[0])
        if key is not None:
            found[key] += float(value)
    return found


def one_run(runner: bench.Bench, forwarding: bool, rep: int, rate: float = 0.0) -> Json:
    args = runner.args
    label = "on" if forwarding else "off"
    loop = f"open loop at {rate:.0f} msg/s" if rate else "closed loop"
    print(f"  rep {rep} forwarding {label}: {args.streams} streams, {loop}", flush=True)
    sink = runner.start_receive_only() if forwarding else None
    try:
        with runner.scratch.directory() as directory:
            flags = ("--forward-to", f"127.0.0.1:{sink.port}") if sink is not None else ()
            server = runner.start_emulator(directory, flags=flags)
            try:
                clients = runner.start_clients(server.port, args.streams, rate)
                time.sleep(args.warmup)
                window = measure(server, sink, clients, args.window)
                streams = clients.stop()
            finally:
                exit_status = server.proc.stop()
    finally:
        if sink is not None:
            sink.proc.stop()
    result: Json = {
        "forwarding": forwarding,
        "rep": rep,
        "offered_msgs_per_s": rate or None,
        **window,
        "streams_ok": sum(1 for s in streams if s["code"] == "OK"),
        "streams_not_ok": [f"{s['code']}: {s['details']}" for s in streams if s["code"] != "OK"],
        "exit_status": exit_status,
    }
    print(
        f"    {result['msgs_per_s']:.0f} msg/s, emulator {result['server_cores']:.2f} cores, "
        f"clients {result['client_cores']:.2f}"
        + (
            f", sink {result['sink_msgs_per_s']:.0f} msg/s {result['sink_cores']:.2f} cores, "
            f"forwarded {result['forwarded_share']:.1%}, dropped {result['forward_dropped']:.0f}"
            if forwarding
            else ""
        ),
        flush=True,
    )
    return result


def measure(
    server: bench.Server, sink: bench.Server | None, clients: bench.Clients, seconds: float
) -> Json:
    """Counters of the emulator (and the sink) over one window, read at the same moments."""

    def read() -> Json:
        return {
            "server": server.snapshot(),
            "forward": forward_counters(server.metrics_port or 0),
            "sink": sink.snapshot() if sink is not None else None,
            "clients_cpu_s": clients.cpu_s(),
            "busy_s": procs.machine_busy_s(),
        }

    before = read()
    time.sleep(seconds)
    after = read()
    elapsed = after["server"]["t"] - before["server"]["t"]
    messages = after["server"]["messages"] - before["server"]["messages"]
    server_cpu = after["server"]["cpu_s"] - before["server"]["cpu_s"]
    client_cpu = after["clients_cpu_s"] - before["clients_cpu_s"]
    shown: Json = {
        "window_s": round(elapsed, 3),
        "msgs_per_s": round(messages / elapsed, 1),
        "files_per_s": round((after["server"]["files"] - before["server"]["files"]) / elapsed, 1),
        "server_cpu_s_per_10k": round(server_cpu / max(messages, 1) * 1e4, 4),
        "server_cores": round(server_cpu / elapsed, 3),
        "client_cores": round(client_cpu / elapsed, 3),
        "peak_rss_mb": round(after["server"]["hwm_kib"] / 1024, 1),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    sink_cpu = 0.0
    if sink is not None:
        received = after["sink"]["messages"] - before["sink"]["messages"]
        sink_cpu = after["sink"]["cpu_s"] - before["sink"]["cpu_s"]
        forwarded = after["forward"]["forwarded"] - before["forward"]["forwarded"]
        shown.update(
            sink_msgs_per_s=round(received / elapsed, 1),
            sink_cores=round(sink_cpu / elapsed, 3),
            sink_cpu_s_per_10k=round(sink_cpu / max(received, 1) * 1e4, 4),
            forwarded_share=round(forwarded / max(messages, 1), 4),
            forward_dropped=after["forward"]["dropped"] - before["forward"]["dropped"],
        )
    other = (after["busy_s"] - before["busy_s"]) - server_cpu - client_cpu - sink_cpu
    shown["other_cores"] = round(max(0.0, other) / elapsed, 3)
    return shown


def summary(runs: list[Json]) -> Json:
    def median_of(forwarding: bool, key: str) -> float:
        return statistics.median(
            r[key] for r in runs if r["forwarding"] is forwarding and not r["offered_msgs_per_s"]
        )

    off, on = median_of(False, "msgs_per_s"), median_of(True, "msgs_per_s")
    ratio = on / off if off else 0.0
    return {
        "off_msgs_per_s": round(off, 1),
        "on_msgs_per_s": round(on, 1),
        "ratio": round(ratio, 3),
        "goal": GOAL,
        "met": ratio >= GOAL,
        "off_server_cpu_s_per_10k": round(median_of(False, "server_cpu_s_per_10k"), 4),
        "on_server_cpu_s_per_10k": round(median_of(True, "server_cpu_s_per_10k"), 4),
        "sink_cpu_s_per_10k": round(median_of(True, "sink_cpu_s_per_10k"), 4),
        "forwarded_share": round(median_of(True, "forwarded_share"), 4),
        "forward_dropped": sum(
            r.get("forward_dropped", 0) for r in runs if not r["offered_msgs_per_s"]
        ),
    }


def open_loop_summary(runs: list[Json]) -> Json:
    """The open-loop pair: accepted against offered, CPU per message, with and without."""
    off, on = (
        next(r for r in runs if r["offered_msgs_per_s"] and r["forwarding"] is forwarding)
        for forwarding in (False, True)
    )
    return {
        "offered_msgs_per_s": off["offered_msgs_per_s"],
        "off_msgs_per_s": off["msgs_per_s"],
        "on_msgs_per_s": on["msgs_per_s"],
        "ratio": round(on["msgs_per_s"] / off["msgs_per_s"], 3) if off["msgs_per_s"] else 0.0,
        "off_server_cpu_s_per_10k": off["server_cpu_s_per_10k"],
        "on_server_cpu_s_per_10k": on["server_cpu_s_per_10k"],
        "forwarded_share": on["forwarded_share"],
        "forward_dropped": on["forward_dropped"],
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repeats of on and off")
    parser.add_argument("--window", type=float, default=6.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds before each window")
    parser.add_argument("--streams", type=int, default=32, help="load streams per run")
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes")
    parser.add_argument(
        "--load-fraction",
        type=float,
        default=0.5,
        help="open-loop phase: this share of the closed-loop off median (0: skip it)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra `serve` flag (repeatable)"
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    bench_args = bench.parse_args(
        [
            "--streams", str(args.streams),
            "--clients", str(args.clients),
            "--window", str(args.window),
            "--warmup", "0",
            *(f"--server-arg={flag}" for flag in args.server_arg),
        ]
    )  # fmt: skip
    bench_args.warmup = args.warmup
    runner = bench.Bench(bench_args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    runs = []
    try:
        for rep in range(args.repeat):
            order = (False, True) if rep % 2 == 0 else (True, False)
            runs += [one_run(runner, forwarding, rep) for forwarding in order]
        if args.load_fraction > 0:
            rate = args.load_fraction * summary(runs)["off_msgs_per_s"]
            runs += [one_run(runner, forwarding, 0, rate) for forwarding in (False, True)]
    finally:
        procs.kill_children()
        runner.scratch.close()
    result = {
        "summary": summary(runs),
        "open_loop": open_loop_summary(runs) if args.load_fraction > 0 else None,
        "machine": bench.describe_machine(),
        "product": bench.product_commit(),
        "command": " ".join(sys.argv),
        "seconds": round(time.monotonic() - started, 1),
        "runs": runs,
    }
    text = json.dumps(result, indent=1) + "\n"
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(text)
    if args.out is not None:
        args.out.write_text(text)
    shown = result["summary"]
    print(
        f"forwarding on/off: {shown['on_msgs_per_s']:.0f} / {shown['off_msgs_per_s']:.0f} msg/s "
        f"= {shown['ratio']:.2f} (goal >= {GOAL}: {'met' if shown['met'] else 'not met'}); "
        f"forwarded {shown['forwarded_share']:.1%} of the load"
    )
    if result["open_loop"] is not None:
        shown = result["open_loop"]
        print(
            f"open loop at {shown['offered_msgs_per_s']:.0f} msg/s offered: on/off "
            f"{shown['on_msgs_per_s']:.0f} / {shown['off_msgs_per_s']:.0f} msg/s = "
            f"{shown['ratio']:.2f}; emulator CPU per 10k messages "
            f"{shown['on_server_cpu_s_per_10k']:.2f} s on, "
            f"{shown['off_server_cpu_s_per_10k']:.2f} s off"
        )
    print(f"wrote {RESULT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

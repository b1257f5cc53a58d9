"""Ingest throughput with the web page open and streaming against the page closed, in one run.

Each run is a fresh emulator on a fresh tmpfs, loaded closed-loop by the benchmark's own load
generators (`benchmarks/load`, the same traffic mix as `make bench`), measured from its
metrics over the window, exactly as `bench.py` measures the emulator. Conditions:

- `closed`: the page is on (`ui_listen`, its index fed from publications) and nobody looks;
- `open`: `--pages` pages follow the event stream (`page_client.py`: the table fetched on
  `hello` and `lagged`, every event decoded; `--browser` makes them real headless Chromium
  pages). They stand for browsers on other machines and run at `nice` 19;
- `stalled` (with `--stalled`): one page asks for the stream and never reads;
- `off` (with `--ui-off`): `ui_listen: ''`, for what the index itself costs.

Runs alternate (closed, open, ..., then the reverse order) `--repeat` times; the result is
the median of each condition and its ratio to `closed`. The goal: `open` at least 0.95.
Also reported: the emulator's own CPU per message (the page's process and the readers are
not in it) and the cores other processes took, since on a shared machine throughput moves
with them.

    python benchmarks/web/page_open.py                       # ~2 minutes
    python benchmarks/web/page_open.py --repeat 3 --stalled --ui-off
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCHMARKS = HERE.parent
sys.path.insert(0, str(BENCHMARKS))

import bench  # noqa: E402

GOAL = 0.95
UI = re.compile(r" ui=(http://\S+/)")
OUT = BENCHMARKS / "results" / "tmp" / "web_page_open.json"


def ui_url(server: bench.Server) -> str:
    for line in list(server.proc.stderr):
        found = UI.search(line)
        if found:
            return found[1]
    raise RuntimeError("the emulator did not say where its page listens")


def index_state(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}api/status", timeout=10) as answer:
        state: dict[str, Any] = json.loads(answer.read())["index"]
    return state


def start_pages(url: str, count: int, mode: str) -> list[bench.Proc]:
    extra = {"open": [], "browser": ["--browser"], "stalled": ["--stalled"]}[mode]
    pages = [
        bench.Proc([sys.executable, str(HERE / "page_client.py"), url, *extra], f"page{n}")
        for n in range(count)
    ]
    for page in pages:
        page.event("streaming", 60.0)
    return pages


def stop_pages(pages: list[bench.Proc]) -> list[bench.Json]:
    found = []
    for page in pages:
        page.signal(signal.SIGTERM)
        found.append(page.event("done", 30.0))
        page.stop()
    return found


def one_run(run_bench: bench.Bench, condition: str, args: argparse.Namespace) -> bench.Json:
    flags = ("--ui-listen", "") if condition == "off" else ()
    with run_bench.scratch.directory() as directory:
        server = run_bench.start_emulator(directory, flags=flags)
        pages: list[bench.Proc] = []
        try:
            url = ui_url(server) if condition != "off" else ""
            if condition == "open":
                pages = start_pages(url, args.pages, "browser" if args.browser else "open")
            elif condition == "stalled":
                pages = start_pages(url, 1, "stalled")
            clients = run_bench.start_clients(server.port, args.streams, 0.0)
            run, _ = run_bench.measure(
                condition, server, clients, warmup=args.warmup, window=args.window
            )
            index = index_state(url) if url else None
            page_stats = stop_pages(pages)
        finally:
            for page in pages:
                page.stop()
            exit_status = server.proc.stop()
    kept = {key: value for key, value in run.items() if not key.startswith("_")}
    return {**kept, "index": index, "pages": page_stats, "exit_status": exit_status}


def summarize(runs: list[bench.Json], conditions: list[str]) -> bench.Json:
    medians = {
        condition: {
            key: statistics.median(r[key] for r in runs if r["phase"] == condition)
            for key in (
                "files_per_s",
                "msgs_per_s",
                "server_cores",
                "server_cpu_s_per_10k",
                "other_cores",
            )
        }
        for condition in conditions
    }
    closed = medians["closed"]["files_per_s"]
    ratios = {c: round(m["files_per_s"] / closed, 3) for c, m in medians.items() if closed}
    # The emulator's own CPU per message: what the page costs it, whatever else runs here.
    cpu = medians["closed"]["server_cpu_s_per_10k"]
    cpu_ratios = {c: round(m["server_cpu_s_per_10k"] / cpu, 3) for c, m in medians.items()}
    return {
        "medians": medians,
        "ratio_to_closed": ratios,
        "cpu_per_message_ratio_to_closed": cpu_ratios,
        "goal_open": GOAL,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes")
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--window", type=float, default=6.0)
    parser.add_argument("--repeat", type=int, default=3, help="alternations of the conditions")
    parser.add_argument("--pages", type=int, default=1, help="pages following the stream")
    parser.add_argument("--browser", action="store_true", help="pages are headless Chromium")
    parser.add_argument("--stalled", action="store_true", help="also: one page that never reads")
    parser.add_argument("--ui-off", action="store_true", help="also: ui_listen '' (no index)")
    parser.add_argument("--out", type=Path, default=OUT)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    bench_args = bench.parse_args(
        [
            *("--streams", str(args.streams), "--clients", str(args.clients)),
            *("--warmup", str(args.warmup), "--window", str(args.window)),
        ]
    )
    run_bench = bench.Bench(bench_args)
    conditions = ["closed", "open"]
    conditions += ["stalled"] if args.stalled else []
    conditions += ["off"] if args.ui_off else []
    started = time.monotonic()
    runs = []
    try:
        for repeat in range(args.repeat):
            order = conditions if repeat % 2 == 0 else conditions[::-1]
            for condition in order:
                run = one_run(run_bench, condition, args)
                index = run["index"] or {}
                print(
                    f"  {condition:8} {run['files_per_s']:9.1f} files/s "
                    f"{run['msgs_per_s']:9.1f} msgs/s  server {run['server_cores']:.2f} cores "
                    f"({run['server_cpu_s_per_10k']:.2f} s/10k msgs), others "
                    f"{run['other_cores']:.2f} cores  "
                    f"index held {index.get('held', '-')} skipped {index.get('skipped', '-')}",
                    flush=True,
                )
                runs.append(run)
    finally:
        bench.kill_children()
        run_bench.scratch.close()
    result = {
        "command": " ".join(["benchmarks/web/page_open.py", *sys.argv[1:]]),
        "duration_s": round(time.monotonic() - started, 1),
        "machine": bench.describe_machine(),
        "config": vars(args) | {"out": str(args.out)},
        **summarize(runs, conditions),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for condition, ratio in result["ratio_to_closed"].items():
        median = result["medians"][condition]
        cpu_ratio = result["cpu_per_message_ratio_to_closed"][condition]
        print(
            f"{condition:8} median {median['files_per_s']:9.1f} files/s  ratio to closed "
            f"{ratio:.3f}; emulator CPU per message {cpu_ratio:.3f} of closed; other "
            f"processes {median['other_cores']:.2f} cores"
        )
    ratio = result["ratio_to_closed"]["open"]
    verdict = "meets" if ratio >= GOAL else "misses"
    print(f"page open / closed: {ratio:.3f} ({verdict} the goal of {GOAL}); {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

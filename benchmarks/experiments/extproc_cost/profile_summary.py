"""Where a py-spy raw profile's samples go: per thread, then inclusive share per function.

python benchmarks/experiments/extproc_cost/profile_summary.py PROFILE.txt [--top 40]
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

FRAME = re.compile(r"^(?P<func>[^ ]+) \((?P<file>[^:)]+)(?::\d+)?\)$")


def short(frame: str) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    file = match["file"]
    for anchor in ("tap_emulator/", "grpc/", "asyncio/", "google/protobuf/", "prometheus_client/"):
        if anchor in file:
            file = anchor + file.split(anchor, 1)[1]
            break
    else:
        file = file.rsplit("/", 1)[-1]
    return f"{match['func']} ({file})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    threads: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    main_total = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        threads[frames[0]] += count
        if "MainThread" not in frames[0]:
            continue
        main_total += count
        seen = set()
        for frame in frames[1:]:
            name = short(frame)
            if name not in seen:
                inclusive[name] += count
                seen.add(name)
        leaf[short(frames[-1])] += count
    total = sum(threads.values())
    print(f"samples {total}")
    for name, count in threads.most_common(12):
        print(f"  {count / total:6.1%} {name}")
    print(f"\nmain thread, inclusive ({main_total} samples)")
    for name, count in inclusive.most_common(args.top):
        print(f"  {count / main_total:6.1%} {name}")
    print("\nmain thread, self (leaf frame)")
    for name, count in leaf.most_common(args.top):
        print(f"  {count / main_total:6.1%} {name}")


if __name__ == "__main__":
    main()

"""Markdown tables from a run_cost.py JSON: per mode, each arm's medians and ratios.

python benchmarks/experiments/extproc_cost/tables.py \
    benchmarks/experiments/extproc_cost/results/envoy.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(data: dict[str, Any]) -> str:
    lines = []
    arms = {a["name"]: a for a in data["arms"]}
    for mode, per in data["summary"].items():
        if mode in ("warmup", "profile"):
            continue
        lines.append(
            f"\n**{mode}** ({data['args']['seconds']:g} s rounds, "
            f"{data['args']['repeat']} repeats)\n"
        )
        lines.append(
            "| arm | Envoy µs/req | ratio to its no tap | ratio to plain no tap | req/s | "
            "server tx per core-s | server µs/tx | lost / sent | streams_failed | "
            "max side streams active | max connections |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, e in per.items():
            gauges = e.get("gauge_max", {})
            lines.append(
                f"| {name} | {fmt(e['envoy_cpu_us_per_request'], 0)} | "
                f"{fmt(e['envoy_cpu_us_per_request_ratio'])} | "
                f"{fmt(e['envoy_cpu_ratio_to_plain_notap'])} | {fmt(e['req_per_s'], 0)} | "
                f"{fmt(e.get('server_transactions_per_core_s'), 0)} | "
                f"{fmt(e.get('server_cpu_us_per_transaction'), 0)} | "
                + (
                    f"{e['lost']} / {e['requests']} | {e['streams_failed']} | "
                    f"{gauges.get('upstream_rq_active', '-')} | "
                    f"{gauges.get('upstream_cx_active', '-')} |"
                    if "lost" in e
                    else "- | - | - | - |"
                )
            )
        _ = arms
    return "\n".join(lines)


def per_round(data: dict[str, Any], arm: str, mode: str, key: str) -> list[Any]:
    return [r.get(key) for r in data["rounds"] if r["arm"] == arm and r["mode"] == mode]


if __name__ == "__main__":
    print(table(json.loads(Path(sys.argv[1]).read_text())))

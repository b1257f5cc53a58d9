"""Turn a benchmark JSON (bench.py's output) into a Markdown report and PNG plots.

    python benchmarks/report.py benchmarks/results/latest.json [--out-dir DIR]

Writes ``<name>.md`` beside the JSON (or in ``--out-dir``) and three plots named after it:
``<name>-throughput.png`` (messages/s against concurrent streams, emulator and
receive-only, with the write-only ceiling as a line), ``<name>-latency.png`` (per-file
arrival-to-publication distribution at 50% and 90% of peak, with the server histogram's
p50/p99) and ``<name>-burst-rss.png`` (server RSS during the overload burst).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

Json = dict[str, Any]


def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:,.{digits}f}"


def summary_table(result: Json) -> str:
    """The summary of every part the run has: the standard set, the ext_proc arms."""
    parts = []
    if "emulator_msgs_per_s" in result:
        parts.append(_standard_summary(result))
    if "extproc" in result:
        parts.append(extproc_table(result["extproc"]))
    return "\n\n".join(parts)


def _standard_summary(result: Json) -> str:
    goals = result.get("goals", {})
    lat = result["latency"]
    rows = [
        (
            "emulator throughput (closed loop, median)",
            f"{_n(result['emulator_msgs_per_s'])} msg/s, {_n(result['emulator_mb_per_s'], 1)} MB/s",
            "",
        ),
        ("files/s verified on disk (same runs)", _n(result["emulator_files_per_s_on_disk"]), ""),
        ("receive-only ceiling", f"{_n(result['receive_only_msgs_per_s'])} msg/s", ""),
        ("write-only ceiling", f"{_n(result['write_only_files_per_s'])} files/s", ""),
        (
            f"ratio to the lower ceiling ({result['lower_ceiling']})",
            _n(result["ratio_to_ceiling"], 3),
            "≥ 0.80",
        ),
        (
            "additive bound 1/(1/receive + 1/write), and the ratio to it",
            f"{_n(result.get('additive_bound_msgs_per_s'))} msg/s, "
            f"{_n(result.get('ratio_to_additive_bound'), 3)}",
            "",
        ),
        ("lost (acknowledged - files), all emulator runs", _n(result["lost"]), "0"),
        (
            "latency at 50% of peak, histogram p50 / p99",
            f"{_n(lat['50']['histogram'].get('p50_ms'), 2)} / "
            f"{_n(lat['50']['histogram'].get('p99_ms'), 2)} ms",
            "p99 < 50 ms",
        ),
        (
            "latency at 50% of peak, per file p50 / p99 / max",
            f"{_n(lat['50']['per_file'].get('p50_ms'), 1)} / "
            f"{_n(lat['50']['per_file'].get('p99_ms'), 1)} / "
            f"{_n(lat['50']['per_file'].get('max_ms'), 1)} ms",
            "",
        ),
        (
            "latency at 90% of peak, histogram p50 / p99",
            f"{_n(lat['90']['histogram'].get('p50_ms'), 2)} / "
            f"{_n(lat['90']['histogram'].get('p99_ms'), 2)} ms",
            "",
        ),
        (
            "latency at 90% of peak, per file p50 / p99 / max",
            f"{_n(lat['90']['per_file'].get('p50_ms'), 1)} / "
            f"{_n(lat['90']['per_file'].get('p99_ms'), 1)} / "
            f"{_n(lat['90']['per_file'].get('max_ms'), 1)} ms",
            "",
        ),
        ("emulator CPU per 10k messages", f"{_n(result['emulator_cpu_s_per_10k'], 3)} s", ""),
        ("emulator peak RSS (standard load)", f"{_n(result['emulator_peak_rss_mb'], 1)} MB", ""),
        ("peak RSS during the 10x burst", f"{_n(result['peak_rss_mb_burst'], 1)} MB", "< 200 MB"),
    ]
    lines = ["| figure | value | goal |", "|---|---:|---|"]
    lines += [f"| {name} | {value} | {goal} |" for name, value, goal in rows]
    if goals:
        met = ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in goals.items())
        lines.append(f"\nGoals: {met}.")
    return "\n".join(lines)


def _runs_table(result: Json) -> str:
    lines = [
        "| phase | target | streams | rep | msg/s | MB/s | files/s on disk | CPU s/10k | "
        "server cores | client cores | other cores | peak RSS MB | lost |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in result["runs"]:
        lines.append(
            f"| {run['phase']} | {run['target']} | {_n(run.get('streams'))} | "
            f"{_n(run.get('rep'))} | {_n(run.get('msgs_per_s'))} | {_n(run.get('mb_per_s'), 1)} | "
            f"{_n(run.get('files_per_s_on_disk'))} | {_n(run.get('server_cpu_s_per_10k'), 3)} | "
            f"{_n(run.get('server_cores'), 2)} | {_n(run.get('client_cores'), 2)} | "
            f"{_n(run.get('other_cores'), 2)} | {_n(run.get('peak_rss_mb'), 1)} | "
            f"{_n(run.get('lost'))} |"
        )
    return "\n".join(lines)


def _machine(result: Json) -> str:
    m = result["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    return "\n".join(
        [
            "| | |",
            "|---|---|",
            f"| CPU | {m['nproc']} x `{m['cpu_model']}`, {m['mem_gib']} GiB RAM |",
            f"| kernel | {m['kernel']} |",
            f"| Python | {m['python']} |",
            f"| packages | {packages} |",
            f"| load average before / after | {m['loadavg_before']} / {m.get('loadavg_after')} |",
            f"| run | {result['started']}, {result['duration_s']} s, `{result['command']}`, "
            f"product {m.get('product_commit', '?')} |",
        ]
    )


def write_report(result: Json, md_path: Path, png_dir: Path) -> list[Path]:
    """Write the Markdown report and the plots; returns the paths written."""
    stem = md_path.stem
    pngs = _plots(result, png_dir, stem) if "emulator_msgs_per_s" in result else []
    parts = [
        f"# tap-emulator benchmark ({result['started']})",
        "",
        "Produced by `benchmarks/bench.py`; method in `benchmarks/README.md`. Only ratios "
        "measured side by side in one run mean anything.",
        "",
        "## Summary",
        "",
        summary_table(result),
        "",
        "## Machine",
        "",
        _machine(result),
        "",
    ]
    if "emulator_msgs_per_s" in result:
        parts += _standard_sections(result)
    if "extproc" in result:
        parts += [
            "## ext_proc: what each way of tapping costs Envoy",
            "",
            extproc_details(result["extproc"]),
            "",
        ]
    parts += [f"![{p.stem}]({p.name})" for p in pngs]
    md_path.write_text("\n".join(parts) + "\n")
    return [md_path, *pngs]


def _standard_sections(result: Json) -> list[str]:
    mix = result["mix"]
    burst = result["burst"]
    return [
        "## Traffic",
        "",
        "Transactions "
        + ", ".join(f"{k} {w:g}" for k, w in mix["kinds"].items())
        + "; body sizes (bytes=weight) "
        + ", ".join(f"{k}={w:g}" for k, w in mix["bodies"].items())
        + f"; {mix['redact_fraction']:.0%} with an `authorization` header. By messages: "
        + ", ".join(f"{k[6:]} {v:.0%}" for k, v in mix.items() if k.startswith("share_"))
        + f"; mean message {mix['mean_wire_bytes']:,.0f} B on the wire, "
        f"{mix['mean_file_bytes']:,.0f} B on disk, largest {mix['max_wire_bytes']:,.0f} B. "
        f"{result['config']['clients']} load-generator processes.",
        "",
        "## Every run",
        "",
        "`other cores`: CPU used on the machine by processes outside the run during the window "
        "(other engineers' work): the noise indicator.",
        "",
        _runs_table(result),
        "",
        "## Overload burst",
        "",
        f"{burst['streams']} streams offered {_n(burst['offered_msgs_per_s'])} msg/s "
        f"(10x the measured throughput) for {result['config']['burst_seconds']} s; "
        f"the server took {_n(burst['msgs_per_s'])} msg/s. RSS idle {burst['idle_rss_mb']} MB, "
        f"peak {burst['peak_rss_mb']} MB (VmHWM; sampled max {burst['rss_sampled_max_mb']} MB). "
        f"Handlers waited for the writer queue {burst['backpressure_s']} s in total; "
        f"lost {burst['lost']}.",
        "",
    ]


ARM_NAMES = {
    "notap": "no tap",
    "tap": "tap filter, file_per_tap",
    "extproc": "ext_proc tap into the emulator",
}


def _ratio(entry: Json, key: str, digits: int, unit: str = "") -> str:
    value, ratio = entry.get(key), entry.get(f"{key}_ratio")
    if value is None:
        return "-"
    shown = f"{value:,.{digits}f}{unit}"
    return shown if ratio is None else f"x{ratio:.2f} ({shown})"


def extproc_table(ext: Json) -> str:
    """Arms against no tap: closed-loop and fixed-rate figures as ratios, absolute beside."""
    if not ext.get("available", True) and "summary" not in ext:
        return f"ext_proc part not run: {ext.get('reason')}"
    summary = ext["summary"]
    settings = ext["settings"]
    rate = settings["fixed_rate_req_per_s"]
    lines = [
        f"| arm | closed loop, {settings['connections']} connections: req/s | p50 | p99 | "
        f"Envoy CPU/req | fixed {rate:,.0f} req/s: req/s held | p50 | p99 | Envoy CPU/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, name in ARM_NAMES.items():
        closed, fixed = summary["closed"][arm], summary["fixed"][arm]
        if not closed.get("available"):
            reason = ext.get("extproc_arm", {}).get("reason", "not measured")
            lines.append(f"| {name} | not available: {reason} | | | | | | | |")
            continue
        lines.append(
            f"| {name} | {_ratio(closed, 'req_per_s', 0)} | {_ratio(closed, 'p50_ms', 2, ' ms')} | "
            f"{_ratio(closed, 'p99_ms', 2, ' ms')} | "
            f"{_ratio(closed, 'envoy_cpu_us_per_request', 0, ' µs')} | "
            f"{_n(fixed.get('req_per_s'))} | {_ratio(fixed, 'p50_ms', 2, ' ms')} | "
            f"{_ratio(fixed, 'p99_ms', 2, ' ms')} | "
            f"{_ratio(fixed, 'envoy_cpu_us_per_request', 0, ' µs')} |"
        )
    goals = ext.get("goals", {})
    if goals:
        shown = ", ".join(
            f"{k}: {'not measured' if v is None else 'met' if v else 'NOT met'}"
            for k, v in goals.items()
        )
        lines.append(f"\next_proc goals: {shown}.")
    return "\n".join(lines)


def extproc_details(ext: Json) -> str:
    """The emulator's side, loss, and every round."""
    if "summary" not in ext:
        return extproc_table(ext)
    settings = ext["settings"]
    mix = ", ".join(
        f"{name} ({m['connections']} connections, HTTP/{m['http']}, "
        f"{m['request_body_bytes']:,} B request body)"
        for name, m in settings["mix"].items()
    )
    parts = [
        f"One Envoy (`--concurrency 1`), one listener per arm, the same route to an upstream "
        f"Envoy that answers itself. Client: h2load, one process per kind: {mix}. "
        f"{settings['repeat']} repeats of a closed-loop and a fixed-rate round per arm, "
        f"{settings['round_seconds']:g} s each, the order of the arms rotating; figures are "
        "medians, `xN` the median of the per-round ratios to no tap. The Envoy under test "
        f"idles at {ext['envoy_idle_cores']:.3f} cores (part of every round's CPU per request, "
        "which weighs on the fixed-rate rounds).",
        "",
    ]
    arm = ext.get("extproc_arm", {})
    closed = ext["summary"]["closed"].get("extproc", {})
    fixed = ext["summary"]["fixed"].get("extproc", {})
    if arm.get("available"):
        parts += [
            f"**Emulator:** {_n(closed.get('emulator_transactions_per_core_s'))} transactions/s "
            f"per core of its own CPU in the closed loop "
            f"({_n(closed.get('emulator_cpu_us_per_transaction'))} µs per transaction, "
            f"{_n(closed.get('emulator_cores'), 2)} cores); at the fixed rate "
            f"{_n(fixed.get('emulator_transactions_per_core_s'))} per core "
            f"({_n(fixed.get('emulator_cpu_us_per_transaction'))} µs per transaction).",
            "",
            f"**Lost by mode:** closed loop {_n(closed.get('lost'))} of "
            f"{_n(closed.get('sent'))} transactions, fixed rate {_n(fixed.get('lost'))} of "
            f"{_n(fixed.get('sent'))}.",
            "",
        ]
        loss = ext["loss"]
        parts += [
            f"**Loss** (the whole part): {_n(loss['transactions_sent'])} transactions sent, "
            f"{_n(loss['files_written'])} files written, lost {_n(loss['lost'])} (the emulator "
            f"opened {_n(loss.get('emulator_streams_opened'))} ext_proc streams); counted by "
            f"the emulator's metrics: {loss['counted_lost_by_emulator'] or 'none'}; Envoy: "
            f"{loss['envoy']}.",
            "",
        ]
    else:
        parts += [f"**ext_proc arm not available:** {arm.get('reason')}", ""]
    lines = [
        "| arm | mode | rep | requests | req/s | p50 ms | p99 ms | Envoy CPU µs/req | "
        "Envoy cores | client cores | emulator cores | emulator tx/s per core | other cores |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ext["rounds"]:
        lines.append(
            f"| {r['arm']} | {r['mode']} | {r['rep']} | {_n(r['requests'])} | "
            f"{_n(r['req_per_s'])} | {_n(r['p50_ms'], 2)} | {_n(r['p99_ms'], 2)} | "
            f"{_n(r['envoy_cpu_us_per_request'])} | {_n(r['envoy_cores'], 2)} | "
            f"{_n(r['client_cores'], 2)} | {_n(r.get('emulator_cores'), 2)} | "
            f"{_n(r.get('emulator_transactions_per_core_s'))} | {_n(r['other_cores'], 2)} |"
        )
    return "\n".join([*parts, *lines])


def _plots(result: Json, directory: Path, stem: str) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []

    sweep = result.get("sweep") or []
    if sweep:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for target, style in (("emulator", "o-"), ("receive-only", "s--")):
            points = sorted((r["streams"], r["msgs_per_s"]) for r in sweep if r["target"] == target)
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], style, label=target)
        ax.axhline(
            result["write_only_files_per_s"],
            color="grey",
            linestyle=":",
            label="write-only ceiling (files/s)",
        )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams (2 per simulated proxy)")
        ax.set_ylabel("messages/s")
        ax.set_ylim(bottom=0)
        ax.set_title("Throughput against concurrent streams (closed loop)")
        ax.grid(alpha=0.3)
        ax.legend()
        path = directory / f"{stem}-throughput.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    samples = result.get("latency_samples_ms") or {}
    if samples:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        colors = {"50": "tab:blue", "90": "tab:orange"}
        for key, values in sorted(samples.items()):
            if not values:
                continue
            color = colors.get(key)
            ys = [i / (len(values) - 1 or 1) for i in range(len(values))]
            ax.plot(values, ys, color=color, label=f"per file (send to link), {key}% of peak")
            hist = result["latency"][key]["histogram"]
            cumulative = hist.get("cumulative") or {}
            total = hist.get("count") or 0
            points = [
                (float(le) * 1e3, c / total)
                for le, c in cumulative.items()
                if le != "+Inf" and total
            ]
            if points:
                ax.step(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    where="post",
                    color=color,
                    linestyle=":",
                    marker=".",
                    label=f"server histogram (arrival to publication), {key}%",
                )
            else:
                for q in ("p50_ms", "p99_ms"):
                    if hist.get(q) is not None:
                        ax.plot([hist[q]], [0.5 if q == "p50_ms" else 0.99], "x", color=color)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.axvline(50, color="red", linestyle=":", linewidth=1)
        lag = (result["latency"].get("50", {}).get("per_file") or {}).get("ctime_lag_corrected")
        spread = f" ±{(lag['max_ms'] - lag['min_ms']) / 2:.0f} ms" if lag else ""
        ax.set_xlabel(f"milliseconds (per file: file ctime, coarse clock, corrected{spread})")
        ax.set_ylabel("share of files")
        ax.set_title("Latency distribution (open loop)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower right")
        path = directory / f"{stem}-latency.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    timeline = result.get("burst", {}).get("rss_timeline") or []
    if timeline:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot([t for t, _ in timeline], [mb for _, mb in timeline])
        ax.axhline(200, color="red", linestyle=":", label="goal: 200 MB")
        ax.set_xlabel("seconds into the measured burst window")
        ax.set_ylabel("server RSS (MB)")
        ax.set_ylim(bottom=0)
        ax.set_title("Server memory during the 10x overload burst")
        ax.grid(alpha=0.3)
        ax.legend()
        path = directory / f"{stem}-burst-rss.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("json", type=Path)
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args()
    result = json.loads(args.json.read_text())
    directory = args.out_dir or args.json.parent
    directory.mkdir(parents=True, exist_ok=True)
    for path in write_report(result, directory / f"{args.json.stem}.md", directory):
        print(path)


if __name__ == "__main__":
    main()

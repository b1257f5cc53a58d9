"""The ext_proc benchmark's arithmetic: h2load's summary, ratios to no tap, goals, loss."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from tests.helpers.paths import REPO

H2LOAD_OUTPUT = """\
finished in 2.00s, 2963.00 req/s, 217.19KB/s
requests: 5926 total, 5928 started, 5926 done, 5925 succeeded, 1 failed, 0 errored, 0 timeout
status codes: 5925 2xx, 0 3xx, 0 4xx, 1 5xx
traffic: 434.39KB (444812) total, 58.10KB (59490) headers (space savings 92.16%)
"""


@pytest.fixture
def bench_modules(monkeypatch: pytest.MonkeyPatch) -> dict[str, ModuleType]:
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from extproc import h2load, phase

    return {"h2load": h2load, "phase": phase}


def round_of(arm: str, mode: str, rep: int, cpu_us: float, **extra: Any) -> dict[str, Any]:
    return {
        "arm": arm,
        "mode": mode,
        "rep": rep,
        "requests": 1000,
        "req_per_s": 1000.0,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "envoy_cpu_us_per_request": cpu_us,
        "not_2xx": 0,
        "other_cores": 0.0,
        **extra,
    }


def test_h2load_summary_gives_rate_and_outcomes(bench_modules: dict[str, ModuleType]) -> None:
    summary = bench_modules["h2load"].parse_summary(H2LOAD_OUTPUT)
    assert summary["seconds"] == 2.0
    assert summary["req_per_s"] == 2963.0
    assert summary["succeeded"] == 5925
    assert summary["failed"] == 1
    assert summary["status_5xx"] == 1


def test_ratio_is_the_median_of_per_round_ratios_to_the_same_repeat(
    bench_modules: dict[str, ModuleType],
) -> None:
    emulator = {
        "emulator_transactions_per_core_s": 4000.0,
        "emulator_cpu_us_per_transaction": 250.0,
        "emulator_cores": 0.5,
        "lost": 0,
    }
    rounds = []
    for mode in ("closed", "fixed"):
        rounds += [
            round_of("notap", mode, 0, 100.0),
            round_of("notap", mode, 1, 200.0),
            round_of("notap", mode, 2, 100.0),
            round_of("tap", mode, 0, 150.0, tap_files=1000),
            round_of("tap", mode, 1, 200.0, tap_files=1000),
            round_of("tap", mode, 2, 110.0, tap_files=1000),
            round_of("extproc", mode, 0, 120.0, **emulator),
            round_of("extproc", mode, 1, 240.0, **emulator),
            round_of("extproc", mode, 2, 130.0, **emulator),
        ]
    summary = bench_modules["phase"].summarize(rounds, True)
    # per repeat: 1.5, 1.0, 1.1 -> median 1.1 (the median of the absolutes would give 1.5)
    assert summary["closed"]["tap"]["envoy_cpu_us_per_request_ratio"] == pytest.approx(1.1)
    assert summary["fixed"]["extproc"]["envoy_cpu_us_per_request_ratio"] == pytest.approx(1.2)
    assert summary["closed"]["tap"]["tap_files_per_request"] == 1.0


def test_goals_hold_only_below_one_and_a_half_times_no_tap(
    bench_modules: dict[str, ModuleType],
) -> None:
    phase = bench_modules["phase"]
    emulator = {
        "emulator_transactions_per_core_s": 3500.0,
        "emulator_cpu_us_per_transaction": 285.0,
        "emulator_cores": 0.5,
    }
    rounds = []
    for mode, extproc_cpu, lost in (("closed", 140.0, 30), ("fixed", 160.0, 0)):
        rounds += [
            round_of("notap", mode, 0, 100.0),
            round_of("extproc", mode, 0, extproc_cpu, lost=lost, **emulator),
        ]
    goals = phase.goals(rounds, True)
    assert goals["envoy_cpu_per_request_le_1.5x_no_tap"] is False
    assert goals["emulator_ge_3000_transactions_per_core_s"] is True
    # the closed loop saturates on purpose: only the fixed rate's loss decides
    assert goals["nothing_lost_at_fixed_rate"] is True


def test_goals_are_not_measured_without_the_extproc_arm(
    bench_modules: dict[str, ModuleType],
) -> None:
    goals = bench_modules["phase"].goals([], False)
    assert set(goals.values()) == {None}


def test_counted_loss_skips_ok_streams_and_zero_counters(
    bench_modules: dict[str, ModuleType],
) -> None:
    samples = {
        'tap_emulator_streams_ended_total{outcome="ok"}': 10.0,
        'tap_emulator_streams_ended_total{outcome="cancelled"}': 2.0,
        'tap_emulator_files_dropped_total{reason="enospc"}': 0.0,
        'tap_emulator_messages_rejected_total{reason="decode"}': 1.0,
        'tap_emulator_streams_refused_total{reason="peer_limit",source="ext_proc"}': 3.0,
        'tap_emulator_extproc_transactions_total{outcome="incomplete"}': 4.0,
        "tap_emulator_files_written_total": 100.0,
    }
    assert bench_modules["phase"].counted_lost(samples) == {
        'tap_emulator_streams_ended_total{outcome="cancelled"}': 2.0,
        'tap_emulator_messages_rejected_total{reason="decode"}': 1.0,
        'tap_emulator_streams_refused_total{reason="peer_limit",source="ext_proc"}': 3.0,
    }

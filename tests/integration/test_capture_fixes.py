"""The fixes a new user asked for, each pinned by a test that fails on the code before them:
a quiet end on a closed pipe, Envoy's streamed files read whole (and directories) by
`inspect`, and `replay` sending a trace once when its JSON twin sits beside it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.emulator import published
from tests.helpers.paths import REPO


def command(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tap_emulator", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def first_line_then_close(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a command whose reader takes one line and goes away, as `| head -1` does."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tap_emulator", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.readline()
    process.stdout.close()
    with process.stderr:
        stderr = process.stderr.read().decode()
    return subprocess.CompletedProcess(process.args, process.wait(60), "", stderr)


@pytest.mark.parametrize(
    "subcommand",
    [["inspect"], ["list"], ["show"], ["export", "har", "-o", "-"]],
    ids=["inspect", "list", "show", "export-har"],
)
def test_a_closed_pipe_ends_quietly(vectors: Path, subcommand: list[str]) -> None:
    # Twice the buffered vectors, so that what inspect, show and export write outgrows a
    # pipe (64 KiB) and meets its closed end however late the reader goes.
    files = sorted((vectors / "buffered").glob("*.pb")) * 2
    run = first_line_then_close(*subcommand, *files)

    assert run.stderr == ""
    assert run.returncode == 141  # as a shell reports a process ended by SIGPIPE


@pytest.mark.parametrize(
    ("path", "segments"),
    [
        ("streamed_raw/h1_post_chunked_b3.pb", 7),
        ("streamed/h1_post_chunked_b3.pb_length_delimited", 8),
    ],
)
def test_inspect_reads_every_segment_of_a_streamed_file(
    vectors: Path, path: str, segments: int
) -> None:
    run = command("inspect", vectors / path, "--compact")

    assert run.returncode == 0, run.stdout
    shown = json_lines(run.stdout)
    assert [item["index"] for item in shown] == list(range(segments))
    assert all("http_streamed_trace_segment" in item["trace"] for item in shown)
    assert "request_headers" in shown[0]["trace"]["http_streamed_trace_segment"]


def test_inspect_reads_a_directory(vectors: Path) -> None:
    run = command("inspect", vectors / "streamed_raw", "--compact")

    assert run.returncode == 0, run.stdout
    assert len(json_lines(run.stdout)) == 7 + 5  # two files, twins skipped


def test_replay_sends_a_trace_once_when_its_json_twin_sits_beside_it(
    start_emulator: Any, vectors: Path, tmp_path: Path
) -> None:
    source = tmp_path / "captured"
    source.mkdir()
    for name in ("h1_get_b3.pb", "h1_get_b3.pb.json"):
        shutil.copy(vectors / "buffered" / name, source / name)
    emulator = start_emulator()
    run = command("replay", source, "--to", emulator.tap, "--json")

    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["messages"] == 1
    assert list(published(emulator.output_dir).values()) == [
        (vectors / "buffered" / "h1_get_b3.pb").read_bytes()
    ]

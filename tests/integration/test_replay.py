"""`tap-emulator replay` against a real emulator process: Envoy's file_per_tap formats and the
emulator's own files go in, one file per trace comes out, byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tap_emulator._proto.envoy.data.tap.v3.wrapper_pb2 import TraceWrapper
from tap_emulator.tools._trace_files import read_traces, split_length_delimited
from tests.helpers import traces as t
from tests.helpers.emulator import published
from tests.helpers.harness import free_port
from tests.helpers.paths import REPO

SEED_STEM = f"{t.SEED_AUTHORITY}-{t.B3}"


def replay(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tap_emulator", "replay", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def summary(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert run.stdout, run.stderr
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def test_envoys_buffered_files_become_one_file_each_with_the_same_bytes(
    start_emulator: Any, vectors: Path
) -> None:
    emulator = start_emulator()
    sources = sorted((vectors / "buffered").glob("*.pb"))
    run = replay(vectors / "buffered", "--glob", "*.pb", "--to", emulator.tap, "--json")

    assert run.returncode == 0, run.stderr
    assert summary(run)["messages"] == len(sources)
    files = published(emulator.output_dir)
    assert sorted(files.values()) == sorted(path.read_bytes() for path in sources)
    assert f"{SEED_STEM}-1.pb" in files


def test_a_length_delimited_streamed_file_becomes_one_file_per_segment_in_order(
    start_emulator: Any, vectors: Path
) -> None:
    emulator = start_emulator()
    source = vectors / "streamed" / "h1_post_chunked_b3.pb_length_delimited"
    run = replay(source, "--to", emulator.tap)

    assert run.returncode == 0, run.stderr
    segments = split_length_delimited(source.read_bytes())
    assert published(emulator.output_dir) == {
        f"{SEED_STEM}-{n}.pb": raw for n, raw in enumerate(segments, start=1)
    }


def test_a_streamed_pb_without_delimiters_is_split_into_its_segments(
    start_emulator: Any, vectors: Path
) -> None:
    emulator = start_emulator()
    source = vectors / "streamed_raw" / "h1_post_chunked_b3.pb"
    expected = [
        json.dumps(item) for item in json.loads(source.with_name(source.name + ".json").read_text())
    ]
    run = replay(source, "--to", emulator.tap)

    assert run.returncode == 0, run.stderr
    files = published(emulator.output_dir)
    assert len(files) == len(expected) > 1
    written = [files[f"{SEED_STEM}-{n}.pb"] for n in range(1, len(expected) + 1)]
    from google.protobuf.json_format import Parse

    assert written == [Parse(text, TraceWrapper()).SerializeToString() for text in expected]


def test_json_files_give_the_same_bytes_as_the_binary_ones(
    start_emulator: Any, vectors: Path, tmp_path: Path
) -> None:
    """A JSON array (the vectors' companions) and Envoy's own back-to-back JSON objects."""
    emulator = start_emulator()
    array = vectors / "buffered" / "grpc_unary_trailers.pb.json"
    back_to_back = tmp_path / "tap_123.json"
    back_to_back.write_bytes((vectors / "admin" / "admin_tap_streaming_json_body_as_string.txt")
                             .read_bytes())  # fmt: skip
    run = replay(array, back_to_back, "--to", emulator.tap, "--json")

    assert run.returncode == 0, run.stderr
    assert summary(run)["messages"] == 1 + 12
    files = published(emulator.output_dir)
    binary = (vectors / "buffered" / "grpc_unary_trailers.pb").read_bytes()
    assert binary in files.values()
    assert len(files) == 13


def test_the_emulators_own_files_replay_to_the_same_names_and_bytes(
    start_emulator: Any, vectors: Path, tmp_path: Path
) -> None:
    first = start_emulator(output_dir=tmp_path / "first")
    assert replay(vectors / "buffered", "--glob", "h1_*.pb", "--to", first.tap).returncode == 0
    second = start_emulator(output_dir=tmp_path / "second")
    run = replay(first.output_dir, "--to", second.tap)

    assert run.returncode == 0, run.stderr
    assert published(second.output_dir) == published(first.output_dir)


def test_an_outbound_identifier_names_files_after_the_namespace(
    start_emulator: Any, vectors: Path
) -> None:
    emulator = start_emulator()
    source = vectors / "buffered" / "h1_get_b3.pb"
    run = replay(
        source, "--to", emulator.tap, "--direction", "outbound", "--namespace", "replay-ns"
    )

    assert run.returncode == 0, run.stderr
    assert published(emulator.output_dir) == {f"replay-ns-{t.B3}-1.pb": source.read_bytes()}


def test_streams_and_repeat_send_every_file_k_times_over_n_calls(
    start_emulator: Any, vectors: Path
) -> None:
    emulator = start_emulator()
    sources = sorted((vectors / "buffered").glob("*.pb"))
    run = replay(
        vectors / "buffered", "--glob", "*.pb", "--to", emulator.tap,
        "--streams", "3", "--repeat", "2", "--json",
    )  # fmt: skip

    assert run.returncode == 0, run.stderr
    result = summary(run)
    assert [s["code"] for s in result["streams"]] == ["OK", "OK", "OK"]
    assert sum(s["messages"] for s in result["streams"]) == 2 * len(sources)
    assert len(published(emulator.output_dir)) == 2 * len(sources)


def test_rate_paces_the_messages(start_emulator: Any, vectors: Path) -> None:
    """Judged by the time replay itself reports for sending (not by process start-up), for a
    run long enough that pacing and no pacing differ by far more than noise."""
    emulator = start_emulator()
    source = vectors / "streamed" / "grpc_server_stream.pb_length_delimited"
    messages = 2 * len(read_traces(source))
    paced = replay(source, "--to", emulator.tap, "--repeat", "2", "--rate", "20", "--json")
    unpaced = replay(source, "--to", emulator.tap, "--repeat", "2", "--json")

    assert paced.returncode == 0 and unpaced.returncode == 0, paced.stderr + unpaced.stderr
    assert summary(paced)["seconds"] >= (messages - 1) / 20
    assert summary(unpaced)["seconds"] < (messages - 1) / 20 / 4


def test_a_call_that_fails_is_reported_and_the_exit_status_is_1(vectors: Path) -> None:
    run = replay(
        vectors / "buffered" / "h1_get_b3.pb", "--to", f"127.0.0.1:{free_port()}", "--json"
    )

    assert run.returncode == 1
    [stream] = summary(run)["streams"]
    assert stream["code"] == "UNAVAILABLE"


def test_a_file_that_is_not_a_trace_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    bad = tmp_path / "notes.pb"
    bad.write_bytes(b"\x08\x01 this is not a TraceWrapper")
    run = replay(bad, "--to", "127.0.0.1:9")

    assert run.returncode == 2
    assert f"{bad}: not a .pb trace file" in run.stderr
